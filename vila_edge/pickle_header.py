"""Tensor names and shapes of a torch.save file (the zip format every torch >= 1.6 writes), without torch and without
running its pickle: a restricted unpickler that knows only the few globals a state dict uses, and records each
tensor's shape instead of building it. What safetensors_header.py is for safetensors, for LAVIS's eva_vit_g.pth."""

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

from .errors import CheckpointError


class _Shape(tuple):
    """A tensor as recorded: its shape."""


def _rebuild_tensor(storage, offset, size, *rest):  # torch._utils._rebuild_tensor_v2
    return _Shape(size)


def _rebuild_parameter(data, *rest):  # torch._utils._rebuild_parameter
    return data


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _GLOBALS:
            return _GLOBALS[module, name]
        if module == "torch" and name.endswith("Storage"):  # the storage's dtype: not needed for a shape
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict")

    def persistent_load(self, pid):
        return pid  # ('storage', type, key, location, numel): the bytes stay in the archive


def pickle_shapes(path: Path) -> dict[str, list[int]]:
    """{tensor name: shape} of a torch.save'd state dict (nested under "model" or "state_dict" is unwrapped)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if data is None:
                raise zipfile.BadZipFile("no data.pkl")
            state = _Unpickler(archive.open(data)).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable torch.save state dict ({e}); copy the file again, or re-save it "
                              "with torch.save(state_dict) from torch >= 1.6") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds {type(state).__name__}, not a state dict of tensors")
    return {k: list(v) for k, v in state.items() if isinstance(k, str) and isinstance(v, _Shape)}

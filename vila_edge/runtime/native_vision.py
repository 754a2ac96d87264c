"""A cpu engine's vision tower on our own kernels: the encoder layers in the C++ engine (kernels/cpu/vit.h, the W8A8
per-token dynamic scheme), the graph's two ends (embeddings; feature selection and projector) in ONNX Runtime. Files
from export/vision_native.py. Imports neither torch nor transformers."""

import json
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..formats import VISION_NATIVE_LAYOUT, check_layout
from ..safetensors_header import read_header_and_metadata
from .onnx_vision import OnnxVision


def open_vit(path: Path, threads: int | None = None, kernels: str = "") -> tuple[object, list[int]]:
    """(the C++ engine over vision_native.safetensors, the layers that run in float)."""
    from safetensors.numpy import load_file

    from .. import _runtime

    _, meta = read_header_and_metadata(path)  # refuses a truncated file with a message
    check_layout(path, meta, VISION_NATIVE_LAYOUT, "rebuild the engine: vila-edge build-engine QUANTIZED --target cpu")
    tensors = load_file(str(path))
    vit = _runtime.VitEngine(hidden=int(meta["hidden"]), heads=int(meta["heads"]), intermediate=int(meta["intermediate"]),
                             gelu=_runtime.GELU_KINDS[meta["gelu"]], threads=threads or 1, kernels=kernels)
    float_layers = []
    for i, (eps1, eps2) in enumerate(json.loads(meta["eps"])):
        prefix = f"layers.{i}."
        layer = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if "q.weight" in layer:
            float_layers.append(i)
        try:
            vit.add_layer(layer, eps1, eps2)
        except ValueError as e:
            raise CheckpointError(f"{path}: layer {i}: {e}; rebuild the engine") from None
    return vit, float_layers


class NativeVision:
    """pixels [N, 3, S, S] float32 -> what the whole vision graph gives (image_embeds, or a multi-scale tower's features)."""

    def __init__(self, root: str | Path, spec: dict, threads: int | None = None, kernels: str = ""):
        root = Path(root)
        self.path = root / spec["file"]
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: missing; rebuild the engine, or run the tower with --vision-backend ort")
        self.vit, self.float_layers = open_vit(self.path, threads, kernels)
        self.embed = OnnxVision(root / spec["embed_file"], threads)
        self.head = spec.get("head_file") and OnnxVision(root / spec["head_file"], threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        hidden = self.vit.forward(self.embed(x))
        return self.head(hidden) if self.head else hidden

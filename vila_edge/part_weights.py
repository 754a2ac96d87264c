"""A checkpoint part's tensors under their VILA-layout names, wherever they are: the part's own safetensors, or
shards shared with the other parts under another model's names (a LLaVA-1.5 folder read in place, renamed by
llava_format.RULES), safetensors or pickle (read with torch.load(weights_only=True); load_checkpoint admitted
pickle files only with allow_pickle)."""

from pathlib import Path

import torch
from safetensors import safe_open

from .llava_format import rename


def _pickle(path: Path) -> dict[str, torch.Tensor]:
    try:  # memory-mapped where the file is torch's zip format (every torch >= 1.6 save), else read whole
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)


def read_part(ckpt, part: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """{VILA-layout name: tensor} of one part (llm, vision_tower, mm_projector), cast to dtype when given."""
    rules, state = ckpt.renames.get(part), {}
    for f in ckpt.weights[part]:
        if f.suffix == ".safetensors":
            with safe_open(f, "pt") as fh:
                for name in fh.keys():
                    new = rename(name, rules, part) if rules else name
                    if new is not None:
                        state[new] = fh.get_tensor(name)
        else:
            for name, tensor in _pickle(f).items():
                new = rename(name, rules, part) if rules else name
                if new is not None:
                    state[new] = tensor
    return {k: v.to(dtype) for k, v in state.items()} if dtype is not None else state

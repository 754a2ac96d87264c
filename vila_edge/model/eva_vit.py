"""LLaMA-VID's EVA-ViT-g tower (LAVIS eva_vit_g.pth) on transformers' Blip2VisionModel: the same pre-LN ViT with q/v
biases beside a bias-free qkv linear (eva_vit.py::Attention: bias = cat(q_bias, 0, v_bias)), exact GELU, LayerNorm
eps 1e-6, a class token and absolute positions, no layer scale. LLaMA-VID uses the last block's output, never a final
norm (EVAVisionTowerLavis.forward), so Blip2's post_layernorm is not part of the tower built here (VisionEncoder stops
after the blocks)."""

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import Blip2VisionConfig, Blip2VisionModel

from ..arch import VisionTower
from ..errors import CheckpointError


def blip2_config(c: dict) -> Blip2VisionConfig:
    return Blip2VisionConfig(
        hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"], intermediate_size=c["intermediate_size"],
        num_attention_heads=c["num_attention_heads"], image_size=c["image_size"], patch_size=c["patch_size"],
        hidden_act="gelu", layer_norm_eps=c.get("layer_norm_eps", 1e-6), qkv_bias=bool(c.get("qkv_bias", True)),
    )  # fmt: skip


def interpolate_positions(table: torch.Tensor, grid: int) -> torch.Tensor:
    """eva_vit.py::interpolate_pos_embed: the patch positions resized bicubically (align_corners False, in float32)
    to grid x grid, the class position kept; float32 out (upstream copies the float result into float32 weights)."""
    old = round((table.shape[1] - 1) ** 0.5)
    if old == grid:
        return table
    table = table.float()
    patches = table[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([table[:, :1], patches.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def rename(state: dict[str, torch.Tensor], tower: VisionTower, grid: int) -> dict[str, torch.Tensor]:
    """LAVIS names -> Blip2VisionModel's; q_bias, a zero k bias and v_bias joined into qkv.bias; positions resized."""
    out = {}
    for name, tensor in state.items():
        for pattern, repl in tower.renames:
            name = re.sub(pattern, repl, name)
        out[name] = tensor
    for key in [k for k in out if k.endswith(".self_attn.q_bias")]:
        prefix = key.removesuffix("q_bias")
        q, v = out.pop(key), out.pop(prefix + "v_bias")
        out[prefix + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    out["embeddings.position_embedding"] = interpolate_positions(out["embeddings.position_embedding"], grid)
    return out


def load_eva_vit(path: Path, config: dict, tower: VisionTower, dtype: torch.dtype) -> Blip2VisionModel:
    """The tower from eva_vit_g.pth (pickle, admitted with --allow-pickle) or its safetensors copy, eval mode."""
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
    grid = config["image_size"] // config["patch_size"]
    state = {k: v.to(dtype) for k, v in rename(state, tower, grid).items()}
    with torch.device("meta"):
        model = Blip2VisionModel(blip2_config(config))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.startswith("post_layernorm.")]  # never run
    unexpected = [k for k in unexpected if not k.startswith(("norm.", "head.", "fc_norm."))]  # LAVIS heads, unused
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{path}: the EVA-ViT-g weights do not match its shapes ({what}); copy the file again")
    model.post_layernorm = torch.nn.LayerNorm(config["hidden_size"])  # a real module in place of the meta one
    return model.eval()

"""VILA1.5-40b's InternViT-6B tower on transformers' InternVLVisionModel: its config and weight names mapped.

VILA ships the tower under its own InternViT code (llava/model/multimodal_encoder/intern/modeling_intern_vit.py,
`InternVisionModel`, model_type intern_vit_6b). transformers' InternVLVisionModel computes the same function with
RMSNorm (`norm_type="rms_norm"`), q/k RMSNorm over the full width before the head split (`use_qk_norm`), layer
scale and a class token; the weights need the renames and the q/k/v split listed in arch.py (`VisionTower.renames`,
`fused_qkv`).
"""

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import InternVLVisionConfig, InternVLVisionModel

from ..arch import VisionTower
from ..errors import CheckpointError


def internvl_config(c: dict) -> InternVLVisionConfig:
    """transformers' config for an intern_vit_6b vision_tower/config.json (VILA's InternVisionConfig defaults)."""
    return InternVLVisionConfig(
        hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
        image_size=c["image_size"], patch_size=c["patch_size"], num_channels=c.get("num_channels", 3),
        attention_bias=bool(c.get("qkv_bias", False)), use_qk_norm=bool(c.get("qk_normalization", True)),
        norm_type="rms_norm",  # VILA's InternVisionEncoderLayer uses InternRMSNorm whatever the config says
        hidden_act=c.get("hidden_act", "gelu"), layer_norm_eps=c.get("layer_norm_eps", 1e-6),
        layer_scale_init_value=c.get("initializer_factor", 0.1),
        use_mean_pooling=True,  # no post-LN: VILA's InternVisionModel has none
    )  # fmt: skip


def rename(state: dict[str, torch.Tensor], tower: VisionTower) -> dict[str, torch.Tensor]:
    """VILA's InternViT tensors under transformers' names; the fused q/k/v linear split in three along its rows."""
    fused, parts = tower.fused_qkv
    out = {}
    for name, tensor in state.items():
        name = name.removeprefix("vision_model.")
        for pattern, repl in tower.renames:
            name = re.sub(pattern, repl, name)
        if f".{fused}." in name:  # attn.qkv.weight [3C, C] -> q, k, v [C, C] (qkv.reshape(.., 3, heads, d))
            for part, chunk in zip(parts, tensor.chunk(3, dim=0)):
                out[name.replace(fused, part)] = chunk.contiguous()
        else:
            out[name] = tensor
    return out


def load_intern_vit(vision_dir: Path, files: list[Path], config: dict, tower: VisionTower,
                    dtype: torch.dtype) -> InternVLVisionModel:
    """The tower from vision_tower/'s safetensors, eval mode, every weight from the files (refused otherwise)."""
    with torch.device("meta"):
        model = InternVLVisionModel(internvl_config(config))
    state = {}
    for f in files:  # pickle files only behind --allow-pickle (checkpoint._weight_files)
        state.update(load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True))
    state = {k: v.to(dtype) for k, v in rename(state, tower).items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{vision_dir}: the InternViT weights do not match vision_tower/config.json ({what}); "
                              "copy vision_tower/ whole from the source checkpoint")
    eps = model.config.layer_norm_eps
    for layer in model.encoder.layer:  # VILA's q/k norms take layer_norm_eps; transformers' are fixed at 1e-6
        for norm in (layer.attention.q_norm, layer.attention.k_norm):
            if hasattr(norm, "variance_epsilon"):
                norm.variance_epsilon = eps
    # the tower runs at its own size only: the table as it is (transformers re-interpolates it whenever it is
    # traced, which would put a bicubic Resize of the constant table into the ONNX)
    embeddings = model.embeddings
    embeddings.interpolate_pos_encoding = lambda _embeddings, _height, _width: embeddings.position_embeddings
    return model.eval()

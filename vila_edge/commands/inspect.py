"""`vila-edge inspect CHECKPOINT|ENGINE`: what the loader sees, or what build-engine made, as a record and as text.
Neither reads a weight nor imports torch or transformers."""

import math
from pathlib import Path
from types import SimpleNamespace

from ..arch import IMAGENET_MEAN, IMAGENET_STD, PROJECTORS, tower_preprocessing
from ..checkpoint import SUBFOLDERS, Checkpoint, load_checkpoint
from ..conversation import resolve_conv_mode
from ..errors import UsageError
from ..formats import BUILD_SCRIPT
from ..runtime.manifest import EngineInfo, is_engine, read_manifest
from ..targets import TARGETS
from ..tiling import per_image

LLM_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size")
VISION_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")


def describe(ckpt: Checkpoint, conv_mode: str | None, projector_order: str | None, max_tiles: int | None = None) -> dict:
    """Everything `inspect` shows of a checkpoint, as one JSON-able record."""
    layout = ckpt.vision_layout.with_max_tiles(max_tiles)
    # the conv mode falls back on the tokenizer's chat template, which is all it reads of the tokenizer
    mode, source = resolve_conv_mode(ckpt, conv_mode, SimpleNamespace(chat_template=ckpt.chat_template))
    params = {n: sum(math.prod(s) for s in ckpt.shapes(n).values())
              for n in SUBFOLDERS if not ckpt.is_pickle(n)}
    return {
        "checkpoint": str(ckpt.root),
        "layout": ckpt.layout,  # vila, or llava / llava-hf read in place
        "vision_tower": str(ckpt.vision_dir),
        "family": ckpt.family.name,
        "config": ckpt.config.get("model_type"),
        "llm": {k: ckpt.llm_config.get(k) for k in LLM_KEYS},
        "vision": {
            "kind": ckpt.vision_kind,
            **{k: ckpt.vision_config.get(k) for k in VISION_KEYS},
            "select_layer": ckpt.select_layer,
            "select_feature": ckpt.select_feature,
            "image_aspect_ratio": ckpt.image_aspect_ratio,
            "preprocessor": ckpt.preprocessor,
            "preprocessor_source": (f"hard-coded in VILA's {ckpt.preprocessor.get('image_processor_type')}"
                                    if tower_preprocessing(ckpt.vision_config) else "preprocessor_config.json"),
        },
        "projector": {"type": ckpt.projector_type, "order": ckpt.projector_order(projector_order) or None,
                      "downsample": PROJECTORS[ckpt.projector_type].downsample},
        "tokens_per_image": ckpt.tokens_per_image,  # per tile, or per 448 block for NVILA
        "tiling": {"mode": layout.mode, "scales": list(layout.scales) or None,
                   "max_tiles": layout.max_tiles if layout.mode.startswith("dynamic") else None,
                   **per_image(layout, ckpt.tokens_per_image)},
        "num_video_frames": ckpt.num_video_frames,
        "conv_mode": mode,
        "conv_mode_source": source,
        "quantization": ckpt.llm_config.get("quantization_config"),
        "parameters": params,
        "llamavid": _llamavid(ckpt),
    }


def _llamavid(ckpt: Checkpoint) -> dict | None:
    """LLaMA-VID's question-conditioned side: the Q-Former, the content tokens, where the BERT tokenizer is."""
    if ckpt.llamavid is None:
        return None
    bert = ckpt.llamavid.bert
    return {**ckpt.llamavid.semantics(), "bert_layers": bert["num_hidden_layers"], "bert_hidden": bert["hidden_size"],
            "question_tokenizer": str(ckpt.llamavid.tokenizer_dir)}


def format_text(info: dict) -> str:
    llm, vis, proj = info["llm"], info["vision"], info["projector"]
    lines = [
        f"checkpoint   {info['checkpoint']} ({info['config']}, family {info['family']})",
        f"llm          {llm['model_type']}: hidden {llm['hidden_size']}, {llm['num_hidden_layers']} layers, "
        f"{llm['num_attention_heads']} heads / {llm['num_key_value_heads']} kv, ffn {llm['intermediate_size']}, "
        f"vocab {llm['vocab_size']}",
        f"vision       {vis['kind']}: hidden {vis['hidden_size']}, {vis['num_hidden_layers']} layers, "
        f"{vis['num_attention_heads']} heads, {vis['image_size']} px / patch {vis['patch_size']}; "
        f"layer {vis['select_layer']} {vis['select_feature']}, {vis['image_aspect_ratio']}",
        f"pixels       {_pixels_line(vis)}",
        f"projector    {proj['type']}" + (f" ({proj['order']}-major tokens)" if proj["order"] else ""),
        f"image tokens {_tokens_line(info)}; " + (f"{info['num_video_frames']} frames per video" if not info["llamavid"]
                                                   else "a video's frames at --fps (default 1) in one image place"),
        f"conv mode    {info['conv_mode']} (from {info['conv_mode_source']})",
    ]
    if info["layout"] != "vila":
        lines.insert(1, f"layout       {info['layout']}, read in place as the VILA layout; vision tower from "
                        f"{info['vision_tower']}")
    if info["llamavid"]:
        q = info["llamavid"]
        lines.insert(-1, f"q-former     {q['bert_type']}: {q['bert_layers']}-layer BERT of width {q['bert_hidden']}, "
                         f"{q['num_query']} queries over the frame; the question through {q['question_tokenizer']}; "
                         f"content tokens by compress_type {q['compress_type']}")
    if info["quantization"]:
        qc = info["quantization"]
        lines.append(f"quantization {qc.get('quant_method')} int{qc.get('bits')} group {qc.get('group_size')} "
                     f"({qc.get('version')} layout)")
    if info["parameters"]:
        lines.append("parameters   " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in info["parameters"].items()))
    return "\n".join(lines)


def _pixels_line(vis: dict) -> str:
    """What the image processor does, in a line, and where its settings come from."""
    pre = vis["preprocessor"]
    size = pre.get("crop_size") if pre.get("do_center_crop") and pre.get("crop_size") else pre.get("size")
    side = size if isinstance(size, int) else next(iter(size.values()), "?") if isinstance(size, dict) else "?"
    mean, std = pre.get("image_mean", [0.5] * 3), pre.get("image_std", [0.5] * 3)
    stats = "ImageNet mean/std" if (mean, std) == (list(IMAGENET_MEAN), list(IMAGENET_STD)) else f"mean {mean} std {std}"
    return f"{side} px, {stats} ({vis['preprocessor_source']})"


def _tokens_line(info: dict) -> str:
    t, per = info["tiling"], info["tokens_per_image"]
    span = lambda r: str(r[0]) if r[0] == r[1] else f"{r[0]} to {r[1]}"  # noqa: E731
    scales = ",".join(map(str, t["scales"] or []))
    if t["mode"] == "single":
        return f"{per} per image"
    if t["mode"] == "s2":
        return f"{per} per image, {span(t['tower_passes'])} tower passes (S2 scales {scales})"
    where = (f"dynamic tiles, {per} per tile" if t["mode"] == "dynamic" else
             f"dynamic_s2 scales {scales}, {per} per block")
    return (f"{span(t['tokens'])} per image alone in its prompt, {span(t['tower_passes'])} tower passes ({where}, "
            f"max_tiles {t['max_tiles']}); {per} per image or frame of a multi-image prompt")


def inspect_checkpoint(path: str, conv_mode: str | None, projector_order: str | None, allow_pickle: bool,
                       max_tiles: int | None = None, **llava) -> dict:
    """`llava`: load_checkpoint's vision_tower / hf_processor for a LLaVA-1.5 folder."""
    return describe(load_checkpoint(path, allow_pickle, **llava), conv_mode, projector_order, max_tiles)


def inspect_engine(path: str, conv_mode: str | None, projector_order: str | None) -> dict:
    """An engine's or a bundle's manifest, with the conv mode caption would use."""
    if projector_order:
        raise UsageError(f"{path}: an engine's image token order was fixed by build-engine; drop --projector-order")
    manifest = read_manifest(path, tuple(TARGETS), kind=None)
    mode, source = resolve_conv_mode(EngineInfo(Path(path), manifest), conv_mode)
    return {"engine": str(path), "conv_mode": mode, "conv_mode_source": source, **manifest}


def format_engine_text(info: dict) -> str:
    llm, q, vis = info["llm"], info["quantization"], info["vision"]
    lines = [
        f"engine       {info['engine']} ({info['target']} {info['kind']} from {info['source']['name']}, "
        f"vila-edge {info['toolkit_version']})",
        f"llm          {llm['architecture']}: hidden {llm['hidden']}, {llm['layers']} layers, {llm['heads']} heads / "
        f"{llm['kv_heads']} kv, ffn {llm['intermediate']}, vocab {llm['vocab']}",
        f"quantization {q['method']} int{q['w_bit']} group {q['group_size']}, lm_head {q['lm_head']}",
        "vision       " + (f"{vis['precision']} {'TensorRT plan' if 'plan' in vis else 'ONNX'}, {vis['image_size']} px, "
                           f"{vis['tokens_per_image']} tokens per image ({vis['projector']}, "
                           f"{vis['projector_order']}-major)" if vis else "none (text only)"),
        f"conv mode    {info['conv_mode']} (from {info['conv_mode_source']})",
    ]
    if info.get("memory_plan"):
        plan = info["memory_plan"]
        lines.append(f"memory plan  {plan['total_gb']:.2f} GB of {plan['usable_gb']} GB usable")
    if info.get("memory", {}).get("weights_mb"):
        lines.append(f"weights      {info['memory']['weights_mb']} MB")
    if info.get("built_with"):
        lines.append("built with   " + ", ".join(f"{k} {v}" for k, v in info["built_with"].items()))
    if info["kind"] == "bundle":
        lines.append(f"next         build the engine on the device: sh {info['engine']}/{BUILD_SCRIPT}")
    return "\n".join(lines)


def inspect_folder(path: str, conv_mode: str | None, projector_order: str | None, allow_pickle: bool,
                   max_tiles: int | None = None, **llava) -> tuple[dict, str]:
    """(the record, its text) of a checkpoint or an engine folder (one with a manifest.json)."""
    if is_engine(path):
        if max_tiles is not None:
            raise UsageError(f"{path}: --max-tiles shows a checkpoint's tiling; caption takes it for an engine")
        info = inspect_engine(path, conv_mode, projector_order)
        return info, format_engine_text(info)
    info = inspect_checkpoint(path, conv_mode, projector_order, allow_pickle, max_tiles, **llava)
    return info, format_text(info)

"""`vila-edge inspect CHECKPOINT`: what the loader sees, as a record and as text."""

import math

from ..arch import PROJECTORS
from ..checkpoint import SUBFOLDERS, Checkpoint, load_checkpoint, tensor_shapes
from ..conversation import resolve_conv_mode

LLM_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size")
VISION_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")


def describe(ckpt: Checkpoint, conv_mode: str | None, projector_order: str | None, tokenizer) -> dict:
    """Everything `inspect` shows, as one JSON-able record."""
    mode, source = resolve_conv_mode(ckpt, conv_mode, tokenizer)
    params = {n: sum(math.prod(s) for s in tensor_shapes(ckpt.weights[n]).values())
              for n in SUBFOLDERS if not ckpt.is_pickle(n)}
    return {
        "checkpoint": str(ckpt.root),
        "family": ckpt.family.name,
        "config": ckpt.config.get("model_type"),
        "llm": {k: ckpt.llm_config.get(k) for k in LLM_KEYS},
        "vision": {
            "kind": ckpt.vision_kind,
            **{k: ckpt.vision_config.get(k) for k in VISION_KEYS},
            "select_layer": ckpt.select_layer,
            "select_feature": ckpt.select_feature,
            "image_aspect_ratio": ckpt.image_aspect_ratio,
        },
        "projector": {"type": ckpt.projector_type, "order": ckpt.projector_order(projector_order) or None,
                      "downsample": PROJECTORS[ckpt.projector_type].downsample},
        "tokens_per_image": ckpt.tokens_per_image,
        "num_video_frames": ckpt.num_video_frames,
        "conv_mode": mode,
        "conv_mode_source": source,
        "quantization": ckpt.llm_config.get("quantization_config"),
        "parameters": params,
    }


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
        f"projector    {proj['type']}" + (f" ({proj['order']}-major tokens)" if proj["order"] else ""),
        f"image tokens {info['tokens_per_image']} per image; {info['num_video_frames']} frames per video",
        f"conv mode    {info['conv_mode']} (from {info['conv_mode_source']})",
    ]
    if info["quantization"]:
        qc = info["quantization"]
        lines.append(f"quantization {qc.get('quant_method')} int{qc.get('bits')} group {qc.get('group_size')} "
                     f"({qc.get('version')} layout)")
    if info["parameters"]:
        lines.append("parameters   " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in info["parameters"].items()))
    return "\n".join(lines)


def inspect_checkpoint(path: str, conv_mode: str | None, projector_order: str | None, allow_pickle: bool) -> dict:
    from ..model.vlm import load_tokenizer

    ckpt = load_checkpoint(path, allow_pickle=allow_pickle)
    return describe(ckpt, conv_mode, projector_order, load_tokenizer(ckpt))

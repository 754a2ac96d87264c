"""HF-format NVILA conversions read as the VILA layout: which part each prefixed tensor goes to, and the VILA configs
made from the HF config.json. Pure (names and dicts in, names and dicts out); commands/convert.py does the files.

NVILA-8B-hf / NVILA-15B-hf: model_type "nvila" (SGLang nvila.py NVILAConfig); NVILA-Lite-*-hf-preview: model_type
"vila" (SGLang vila.py VILAConfig) or "nvila_lite". One folder: config.json with text_config / vision_config, the
tokenizer, preprocessor_config.json, safetensors with tensors under llm. / vision_tower. / mm_projector.
"""

from .errors import CheckpointError

HF_MODEL_TYPES = ("nvila", "vila", "nvila_lite")
PREFIXES = {"llm.": "llm", "vision_tower.": "vision_tower", "mm_projector.": "mm_projector"}
FIX = "convert an HF-format NVILA folder (NVILA-8B-hf, NVILA-Lite-2B-hf-preview), or load a VILA-layout one directly"

# SGLANG DEFAULTS: what SGLang uses where an HF config does not say. nvila.py hardcodes dynamic_s2 with scales
# 448/896/1344 (tile 448), select layer -2 / cls_patch, the merge to the last scale (-1) and a row-major 2x2
# mlp_downsample; vila.py / nvila_lite.py read select layer / feature and the projector type from the config, with
# a 3x3 downsample, and tile as the remote processor does (HEAD's dynamic_preprocess, 1..12 tiles). Fields SGLang
# does not use take VILA's loader defaults (num_video_frames 8). Each one taken is reported by `vila-edge convert`.
NVILA_DEFAULTS = {
    "image_aspect_ratio": "dynamic_s2", "dynamic_s2": True, "s2": False, "s2_scales": "448,896,1344",
    "s2_resize_output_to_scale_idx": -1, "mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch",
    "min_tiles": 1, "max_tiles": 12, "num_video_frames": 8, "mm_projector_type": "mlp_downsample",
}
LITE_DEFAULTS = {
    "image_aspect_ratio": "dynamic", "dynamic_s2": False, "s2": False, "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "cls_patch", "min_tiles": 1, "max_tiles": 12, "num_video_frames": 8,
    "mm_projector_type": "mlp_downsample_3x3_fix",
}
# Top-level fields copied from the HF config as they are when present (beyond those with a default above).
CARRIED = ("s2_max_split_size", "video_max_tiles", "mm_use_im_start_end", "mm_use_im_patch_token", "conv_mode",
           "chat_template", "fps", "num_time_tokens", "time_token_format", "video_encoder", "image_encoder")


def is_hf_format(config: dict) -> bool:
    """An HF-format conversion: text_config and vision_config in one config.json (the VILA layout has llm_cfg ...)."""
    return isinstance(config.get("text_config"), dict) and isinstance(config.get("vision_config"), dict)


def check_hf_config(config: dict, path) -> None:
    """Refuses a config.json that is not an HF-format NVILA conversion, in one line naming it and the fix."""
    if not is_hf_format(config):
        hint = " (this is a VILA-layout checkpoint: load it as it is)" if "llm_cfg" in config else ""
        raise CheckpointError(f"{path}: no text_config / vision_config, not an HF-format NVILA conversion{hint}; {FIX}")
    if config.get("model_type") not in HF_MODEL_TYPES:
        raise CheckpointError(f"{path}: model_type {config.get('model_type')!r} is not an HF-format NVILA conversion "
                              f"(expected {' / '.join(HF_MODEL_TYPES)}); {FIX}")


def split_names(files_of: dict[str, str], root) -> dict[str, dict[str, str]]:
    """{HF tensor name: its file} -> {part: {VILA-layout name: HF name}}: llm.X -> llm/ X, vision_tower.X ->
    vision_tower/ X (vision_model.* as the published VILA towers), mm_projector.layers.X -> mm_projector/ layers.X.
    A tensor under no prefix, or a part with no tensor, stops it in one line naming the file."""
    parts: dict[str, dict[str, str]] = {part: {} for part in PREFIXES.values()}
    for name, file in files_of.items():
        prefix = next((p for p in PREFIXES if name.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(
                f"{file}: tensor {name!r} belongs to no part (expected a prefix {' / '.join(PREFIXES)}); the file "
                "comes from another model, remove it or replace it with the HF-format NVILA release's")
        parts[PREFIXES[prefix]][name[len(prefix):]] = name
    for part, names in parts.items():
        if not names:
            raise CheckpointError(f"{root}: no tensor prefixed {part}.; a shard is missing or this is not an "
                                  f"HF-format NVILA conversion; copy every *.safetensors of the release")
    odd = next((n for n in parts["mm_projector"] if not n.startswith("layers.")), None)
    if odd is not None:
        raise CheckpointError(f"{files_of['mm_projector.' + odd]}: projector tensor mm_projector.{odd} is not under "
                              "mm_projector.layers.; not an NVILA projector, use the release's weights")
    return parts


def vila_configs(hf: dict) -> tuple[dict, dict[str, object]]:
    """(the VILA-layout top config.json with llm_cfg / vision_tower_cfg / mm_projector_cfg, {field: default} for
    each field the HF config lacked and an SGLang / VILA default filled). check_hf_config first."""
    nvila = hf["model_type"] == "nvila"
    defaults = dict(NVILA_DEFAULTS if nvila else LITE_DEFAULTS)
    top = {k: hf.get(k, v) for k, v in defaults.items()}
    used = {k: v for k, v in defaults.items() if k not in hf}
    text, vision = sub_configs(hf, used)
    n_scales = len(str(top["s2_scales"]).split(",")) if nvila else 1
    if nvila and "s2_max_split_size" not in hf:
        top["s2_max_split_size"] = used["s2_max_split_size"] = int(str(top["s2_scales"]).split(",")[0])
    for key, value in (("hidden_size", text["hidden_size"]), ("mm_hidden_size", vision["hidden_size"] * n_scales)):
        top[key] = hf.get(key, value)
    projector = {"architectures": ["MultimodalProjector"], "model_type": "v2l_projector",
                 "mm_projector_type": top["mm_projector_type"]}
    top = {"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama",
           "llm_cfg": {**text, "_name_or_path": "./llm"}, "vision_tower_cfg": {**vision, "_name_or_path": "./vision_tower"},
           "mm_projector_cfg": {**projector, "_name_or_path": "./mm_projector"},
           "model_dtype": f"torch.{hf.get('torch_dtype') or hf.get('dtype') or 'bfloat16'}", **top,
           **{k: hf[k] for k in CARRIED if k in hf}}
    return top, used


def sub_configs(hf: dict, used: dict) -> tuple[dict, dict]:
    """(llm/config.json, vision_tower/config.json) from text_config / vision_config; a vision config without
    architectures (transformers drops them in a nested config) gets its model_type's class."""
    text = {k: v for k, v in hf["text_config"].items() if k != "_name_or_path"}
    vision = {k: v for k, v in hf["vision_config"].items() if k != "_name_or_path"}
    if not vision.get("architectures") and vision.get("model_type") in ("siglip_vision_model", "siglip"):
        vision["architectures"] = used["vision_config.architectures"] = ["SiglipVisionModel"]
    return text, vision


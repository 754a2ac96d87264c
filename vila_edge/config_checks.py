"""What a checkpoint's files must hold, checked where they are read: the top-level and part configs (every key
the Checkpoint properties and the model classes read, with its type and range), the image processor's config,
and the tokenizer's files as transformers will parse them. Each refusal names the file and the fix."""

import json
from pathlib import Path

from .arch import PROJECTORS, get_llm
from .errors import CheckpointError, UnsupportedError

RESTORE = "restore it from the source checkpoint"
ASPECT_RATIOS = (None, "resize", "pad", "dynamic", "dynamic_s2")  # None: the image processor alone, as in VILA
SELECT_FEATURES = ("cls_patch", "patch")


def read_json(path: Path, fix: str) -> dict:
    """A JSON object from path; anything else (missing, unreadable, not JSON, null, a list, ...) names the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {fix}")
    try:
        value = json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror}); check the permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); {RESTORE}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: holds {describe(value)}, not a JSON object; {RESTORE}")
    return value



def describe(value) -> str:
    """What a file holds instead of a JSON object, for a message."""
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list"}[type(value)]



def shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_count(value) -> bool:
    """A positive integer (JSON true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _wrong(path: Path, config: dict, key: str, expected: str) -> CheckpointError:
    found = f"is {shown(config[key])}" if key in config else "is missing"
    return CheckpointError(f"{path}: {key} {found}, expected {expected}; {RESTORE}")


def _int(config: dict, key: str, path: Path, required: bool = True) -> int | None:
    """config[key], a positive integer; None where it is absent or null and not required."""
    value = config.get(key)
    if value is None and not required:
        return None
    if not is_count(value):
        raise _wrong(path, config, key, "a positive integer")
    return value


def _flag(config: dict, key: str, path: Path) -> bool:
    value = config.get(key)
    if value is not None and not isinstance(value, bool):
        raise _wrong(path, config, key, "true or false")
    return bool(value)


def _name(config: dict, key: str, path: Path) -> str | None:
    value = config.get(key)
    if value is not None and not isinstance(value, str):
        raise _wrong(path, config, key, "a name (a string)")
    return value


def string_list(config: dict, key: str, path: Path) -> list[str]:
    value = config.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _wrong(path, config, key, "a list of names")
    return value


def _one_of(config: dict, key: str, path: Path, choices: tuple, default=None):
    value = config.get(key, default)
    if value not in choices:  # a tuple compares with ==, so a list or dict value is refused rather than raising
        raise _wrong(path, config, key, "one of " + ", ".join(str(c) for c in choices if c is not None))
    return value


def check_top_config(config: dict, path: Path) -> None:
    """Types and values of the top-level keys the Checkpoint reads (the select layer waits for the tower)."""
    _name(config, "model_type", path)
    for key in ("conv_mode", "chat_template"):
        _name(config, key, path)
    _one_of(config, "image_aspect_ratio", path, ASPECT_RATIOS, "resize")
    _one_of(config, "mm_vision_select_feature", path, SELECT_FEATURES, "cls_patch")
    frames = config.get("num_video_frames")
    if frames not in (None, 0) and not is_count(frames):
        raise _wrong(path, config, "num_video_frames", "a number of frames (0 or null: 8)")
    if _flag(config, "s2", path) | _flag(config, "dynamic_s2", path):
        scales = config.get("s2_scales")
        pieces = scales.split(",") if isinstance(scales, str) else []
        if not pieces or not all(p.strip().isdigit() and int(p) > 0 for p in pieces):
            raise _wrong(path, config, "s2_scales", 'comma-separated image sizes such as "336,672,1008"')
    check_video_encoder(config, path)


def check_video_encoder(config: dict, path: Path) -> None:
    """NVILA-8B-Video's temporal pooling (TSPVideoEncoder) and time tokens are not implemented: refused, not guessed."""
    encoder = config.get("video_encoder")
    target = encoder.get("_target_", "") if isinstance(encoder, dict) else str(encoder or "")
    if "TSP" in target or (config.get("num_time_tokens") or 0) > 0:
        raise UnsupportedError(
            f"{path}: video_encoder {target or '?'} / num_time_tokens {config.get('num_time_tokens')}: NVILA-Video's "
            "temporal pooling and time tokens are not supported yet; use NVILA-8B, or NVILA-Lite, for video"
        )


def check_feature_selection(ckpt) -> None:
    """mm_vision_select_layer indexes the tower's hidden states: 0 (the embeddings) to n_layers, or from the end."""
    path, n_layers = ckpt.root / "config.json", ckpt.vision_config["num_hidden_layers"]
    layer = ckpt.config.get("mm_vision_select_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -(n_layers + 1) <= layer <= n_layers:
        raise CheckpointError(
            f"{path}: mm_vision_select_layer is {shown(layer)}, expected an integer from {-(n_layers + 1)} to "
            f"{n_layers} for this {n_layers}-layer tower (VILA uses -2); {RESTORE}"
        )


LLM_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
LLM_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "tokenizer_model_max_length", "model_max_length")  # or null
VISION_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                "patch_size")  # fmt: skip


def check_llm_config(config: dict, path: Path) -> None:
    get_llm(_name(config, "model_type", path), str(path))
    for key in LLM_SIZES:
        _int(config, key, path)
    for key in LLM_OPTIONAL_SIZES:
        _int(config, key, path, required=False)
    _int(config, "max_position_embeddings", path, required="max_position_embeddings" in config)  # not null
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise CheckpointError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads "
                              f"{kv_heads}; {RESTORE}")  # fmt: skip
    if not config.get("head_dim") and config["hidden_size"] % heads:
        raise CheckpointError(f"{path}: hidden_size {config['hidden_size']} is not a multiple of num_attention_heads "
                              f"{heads}; {RESTORE}")  # fmt: skip
    if not any(config.get(k) for k in ("tokenizer_model_max_length", "model_max_length", "max_position_embeddings")):
        raise CheckpointError(f"{path}: no context length (max_position_embeddings, model_max_length or "
                              f"tokenizer_model_max_length); {RESTORE}")  # fmt: skip
    _check_quantization(config, path)


def _check_quantization(config: dict, path: Path) -> None:
    """None, or the AWQ int4 GEMM layout `vila-edge quantize` writes (the only one the loaders unpack)."""
    q = config.get("quantization_config")
    if q is None:
        return
    if not isinstance(q, dict) or not isinstance(q.get("quant_method"), str):
        raise _wrong(path, config, "quantization_config", 'a JSON object with a "quant_method"')
    if (q["quant_method"], q.get("bits"), q.get("version", "gemm")) != ("awq", 4, "gemm"):
        raise UnsupportedError(
            f"{path}: quantization_config {shown(q['quant_method'])} (bits {shown(q.get('bits'))}, version "
            f"{shown(q.get('version'))}) is not supported; vila-edge reads fp16/bf16 checkpoints and the AWQ int4 GEMM "
            "ones vila-edge quantize writes"
        )
    group = q.get("group_size")
    if not is_count(group):
        raise CheckpointError(f"{path}: quantization_config group_size is {shown(group)}, expected a positive "
                              f"integer; {RESTORE}")  # fmt: skip


def check_vision_config(config: dict, path: Path) -> None:
    string_list(config, "architectures", path)
    _name(config, "model_type", path)
    for key in VISION_SIZES:
        _int(config, key, path, required=key != "intermediate_size" or "mlp_ratio" not in config)  # DINOv2: a ratio
    if config.get("intermediate_size") is None and not _number(config["mlp_ratio"], positive=True):
        raise _wrong(path, config, "mlp_ratio", "a positive number (the MLP's width over hidden_size)")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise CheckpointError(f"{path}: hidden_size {config['hidden_size']} is not a multiple of num_attention_heads "
                              f"{config['num_attention_heads']}; {RESTORE}")  # fmt: skip
    if config["patch_size"] > config["image_size"]:
        raise CheckpointError(f"{path}: patch_size {config['patch_size']} is larger than image_size "
                              f"{config['image_size']}; {RESTORE}")  # fmt: skip


def check_projector_type(projector_dir: Path, projector_config: dict) -> None:
    ptype = projector_config.get("mm_projector_type")
    if not isinstance(ptype, str) or ptype not in PROJECTORS:
        raise CheckpointError(
            f"{projector_dir / 'config.json'}: unknown mm_projector_type {shown(ptype)}; known: {', '.join(PROJECTORS)}"
        )


def _number(value, positive: bool = False) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (value > 0 or not positive)


def _pixels(value, path: Path, key: str, edge: bool) -> tuple[int, int]:
    """(width, height) of an image processor size: an integer, {height, width}, or (edge) {shortest_edge}."""
    if is_count(value):
        return value, value
    if isinstance(value, dict):
        if edge and "shortest_edge" in value:
            if is_count(value["shortest_edge"]):
                return value["shortest_edge"], value["shortest_edge"]
        elif is_count(value.get("width")) and is_count(value.get("height")):
            return value["width"], value["height"]
    shapes = "an integer, {height, width}" + (" or {shortest_edge}" if edge else "")
    raise CheckpointError(f"{path}: {key} is {shown(value)}, expected a size in pixels ({shapes}); {RESTORE}")


def processor_size(pre: dict, path: Path) -> tuple[int, int]:
    """(width, height) of the images the processor makes: its crop where it crops, else its size."""
    crop = pre.get("crop_size")
    if pre.get("do_center_crop") and crop:
        return _pixels(crop, path, "crop_size", edge=False)
    return _pixels(pre.get("size"), path, "size", edge=True)


def check_preprocessor(ckpt) -> None:
    """What media.preprocess reads, and that the images it makes are the size the tower takes."""
    pre, path = ckpt.preprocessor, ckpt.vision_dir / "preprocessor_config.json"
    # media.preprocess has a default for each key that is absent, none for a null one
    for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        if key in pre and not isinstance(pre[key], bool):
            raise _wrong(path, pre, key, "true or false")
    resample = pre.get("resample", 3)
    if isinstance(resample, bool) or resample not in range(6):  # PIL's Resampling, NEAREST 0 to HAMMING 5
        raise _wrong(path, pre, "resample", "a PIL resampling filter, 0 to 5 (3: bicubic)")
    if "rescale_factor" in pre and not _number(pre["rescale_factor"], positive=True):
        raise _wrong(path, pre, "rescale_factor", "a positive number (1/255)")
    for key in ("image_mean", "image_std"):
        value = pre.get(key, [0.5] * 3)
        if not (isinstance(value, list) and len(value) == 3 and all(_number(v, key == "image_std") for v in value)):
            raise _wrong(path, pre, key, "a list of 3 numbers (R, G, B)" + (", none 0" if key == "image_std" else ""))
    size = processor_size(pre, path)
    layout = ckpt.vision_layout
    if layout.mode == "dynamic_s2":  # NVILA's tower sets the size itself (its first scale)
        return
    want, what = ((layout.scales[-1], "S2's largest scale") if layout.mode == "s2" else
                  (ckpt.image_size, f"the vision tower takes ({ckpt.vision_dir / 'config.json'})"))
    if size != (want, want):
        raise CheckpointError(
            f"{path}: the processor makes {size[0]}x{size[1]} images, {what} is {want}x{want}; copy the tower's own "
            "preprocessor_config.json from the source checkpoint"
        )


def check_llm_files(llm_dir: Path) -> None:
    """The tokenizer's files (and the generation config) parse, as transformers will read them."""
    if not (llm_dir / "tokenizer_config.json").is_file() or not any(
        (llm_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")
    ):
        raise CheckpointError(
            f"{llm_dir}: tokenizer files missing (need tokenizer_config.json and tokenizer.json or tokenizer.model); "
            "copy them from the source checkpoint"
        )
    _check_tokenizer_config(read_json(llm_dir / "tokenizer_config.json", RESTORE), llm_dir / "tokenizer_config.json")
    for name, check in (("special_tokens_map.json", _check_special_tokens), ("added_tokens.json", None),
                        ("generation_config.json", _check_generation_config)):  # fmt: skip
        if (llm_dir / name).is_file():
            config = read_json(llm_dir / name, RESTORE)
            if check:
                check(config, llm_dir / name)
    if (llm_dir / "tokenizer.json").is_file():  # transformers reads it first, and tokenizer.model only without it
        _check_fast_tokenizer(llm_dir / "tokenizer.json")
    else:
        _check_sentencepiece(llm_dir / "tokenizer.model")


SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def _added_token(value) -> bool:
    """A token as transformers saves an AddedToken: an object with its text in `content`."""
    return isinstance(value, dict) and isinstance(value.get("content"), str)


def _check_special_tokens(config: dict, path: Path) -> None:
    for key in SPECIAL_TOKENS:
        value = config.get(key)
        if value is not None and not isinstance(value, str) and not _added_token(value):
            raise _wrong(path, config, key, 'a token (its text, or {"content": text, ...})')


def _check_tokenizer_config(config: dict, path: Path) -> None:
    """The keys of tokenizer_config.json that transformers takes on trust."""
    _check_special_tokens(config, path)
    _name(config, "tokenizer_class", path)
    if config.get("model_max_length") is not None and not _number(config["model_max_length"], positive=True):
        raise _wrong(path, config, "model_max_length", "a positive number")
    template = config.get("chat_template")
    named = isinstance(template, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                                and isinstance(t.get("template"), str) for t in template)  # fmt: skip
    if template is not None and not isinstance(template, str) and not named:
        raise _wrong(path, config, "chat_template", "a Jinja template (a string) or a list of {name, template}")
    added = config.get("added_tokens_decoder", {})
    if not isinstance(added, dict) or not all(_added_token(v) for v in added.values()):
        raise _wrong(path, config, "added_tokens_decoder", 'a JSON object of id -> {"content": text, ...}')


def _check_generation_config(config: dict, path: Path) -> None:
    for key in TOKEN_IDS:
        value = config.get(key)
        ids = value if isinstance(value, list) and key == "eos_token_id" else [value]  # several ids may end a turn
        if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise _wrong(path, config, key, "a token id" + (" or a list of them" if key == "eos_token_id" else ""))


TOKENIZER_MODELS = ("BPE", "WordPiece", "WordLevel", "Unigram")
TOKENIZER_STAGES = ("normalizer", "pre_tokenizer", "post_processor", "decoder")


def _check_fast_tokenizer(path: Path) -> None:
    """The outline of a `tokenizers` file that transformers and `tokenizers` index into without checking."""
    tok = read_json(path, RESTORE)
    model = tok.get("model")
    if not isinstance(model, dict) or model.get("type", "BPE") not in TOKENIZER_MODELS:
        raise _wrong(path, tok, "model", f"an object whose type is one of {', '.join(TOKENIZER_MODELS)}")
    vocab = list if model.get("type") == "Unigram" else dict
    if not isinstance(model.get("vocab"), vocab):
        raise CheckpointError(f"{path}: the model's vocab is {shown(model.get('vocab'))}, expected a "
                              f"{'list' if vocab is list else 'JSON object'} of tokens; {RESTORE}")  # fmt: skip
    added = tok.get("added_tokens")
    if not isinstance(added, list) or not all(_added_token(t) and isinstance(t.get("id"), int) for t in added):
        raise _wrong(path, tok, "added_tokens", 'a list of {"id": ..., "content": ...}')
    for key in TOKENIZER_STAGES:
        stage = tok.get(key)
        if stage is not None and not (isinstance(stage, dict) and isinstance(stage.get("type"), str)):
            raise _wrong(path, tok, key, 'null or an object with a "type"')


def _check_sentencepiece(path: Path) -> None:
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise CheckpointError(f"{path}: not a SentencePiece model ({e}); {RESTORE}") from None

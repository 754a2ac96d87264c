"""Find, read and validate a VILA-layout checkpoint folder (llm/, vision_tower/, mm_projector/).

Validation reads the configs, the tokenizer's files and the safetensors headers; no weights are loaded here.
Every value the properties below (and the model classes after them) read is checked where it is read, so a
broken file stops the load with a CheckpointError naming that file, before any model is built.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from .arch import FAMILIES, PROJECTORS, TEMPLATES, VISION_TOWERS, Family, get_llm, tokens_after, tower_kind
from .errors import CheckpointError, UnsupportedError
from .formats import CHECKPOINT_PARTS as SUBFOLDERS
from .formats import PICKLE_SUFFIXES
from .safetensors_header import read_header


@dataclass
class Checkpoint:
    root: Path
    config: dict  # top-level config.json
    llm_dir: Path
    vision_dir: Path
    projector_dir: Path
    llm_config: dict
    vision_config: dict
    projector_config: dict
    preprocessor: dict
    family: Family
    weights: dict[str, list[Path]] = field(repr=False)  # subfolder -> weight files

    def recorded_conv_mode(self) -> tuple[str, str] | None:
        """The template config.json names (ours, or the remote-code conversions' chat_template), or a *.jinja."""
        for key in ("conv_mode", "chat_template"):
            if self.config.get(key) in TEMPLATES:
                return self.config[key], f"config.json {key}"
        for jinja in sorted(self.root.glob("*.jinja")):
            if jinja.stem in TEMPLATES:
                return jinja.stem, jinja.name
        return None

    def is_pickle(self, part: str) -> bool:
        """True where that subfolder's weights are pickle files (accepted with allow_pickle only)."""
        return self.weights[part][0].suffix != ".safetensors"

    @property
    def name(self) -> str:
        return self.root.resolve().name

    @property
    def projector_type(self) -> str:
        return self.projector_config["mm_projector_type"]

    def projector_order(self, override: str | None = None) -> str:
        """Token order of the downsample: the override, else the order of the code this family was trained with."""
        spec = PROJECTORS[self.projector_type]
        if not spec.order:
            return ""
        if override:
            return override
        return self.family.downsample_order if self.projector_type == "mlp_downsample" else spec.order

    @property
    def vision_kind(self) -> str:
        return tower_kind(self.vision_config)

    @property
    def select_layer(self) -> int:
        return int(self.config.get("mm_vision_select_layer", -2))

    @property
    def select_feature(self) -> str:
        return self.config.get("mm_vision_select_feature", "cls_patch")

    @property
    def image_aspect_ratio(self) -> str:
        return self.config.get("image_aspect_ratio", "resize")

    @property
    def num_video_frames(self) -> int:
        return int(self.config.get("num_video_frames") or 8)

    @property
    def s2_scales(self) -> list[int]:
        if not (self.config.get("s2") or self.config.get("dynamic_s2")):
            return []
        return [int(s) for s in str(self.config.get("s2_scales", "")).split(",") if s.strip()]

    @property
    def mm_hidden(self) -> int:
        """Width of the features that reach the projector: vision hidden × number of S2 scales."""
        return self.vision_config["hidden_size"] * max(1, len(self.s2_scales))

    @property
    def llm_hidden(self) -> int:
        return self.llm_config["hidden_size"]

    @property
    def image_size(self) -> int:
        return int(self.vision_config["image_size"])

    @property
    def vision_tokens(self) -> int:
        """Tokens per image out of the tower after feature selection."""
        n = (self.image_size // self.vision_config["patch_size"]) ** 2
        tower = VISION_TOWERS.get(self.vision_kind)
        if tower is not None and tower.cls_token:
            n += 1
        return n - 1 if self.select_feature == "patch" else n  # `patch` drops token 0

    @property
    def tokens_per_image(self) -> int:
        return tokens_after(self.vision_tokens, PROJECTORS[self.projector_type].downsample)

    @property
    def model_max_length(self) -> int:
        c = self.llm_config
        return int(c.get("tokenizer_model_max_length") or c.get("model_max_length") or c["max_position_embeddings"])


# ---- reading the folder -----------------------------------------------------------------------------------

RESTORE = "restore it from the source checkpoint"
ASPECT_RATIOS = (None, "resize", "pad", "dynamic", "dynamic_s2")  # None: the image processor alone, as in VILA
SELECT_FEATURES = ("cls_patch", "patch")


def _describe(value) -> str:
    """What a file holds instead of a JSON object, for a message."""
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list"}[type(value)]


def _read_json(path: Path, fix: str) -> dict:
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
        raise CheckpointError(f"{path}: holds {_describe(value)}, not a JSON object; {RESTORE}")
    return value


def _subfolder(root: Path, config: dict, name: str) -> Path:
    """VILA resolves a dict-valued `<name>_cfg` to root/<name>; a string value is a path, often one on the machine
    that trained it (then the folder of that name here is taken, else root/<name>)."""
    value = config.get(f"{name}_cfg")
    path = root / name
    if isinstance(value, str):
        named = Path(value) if Path(value).is_absolute() else root / value
        path = next((p for p in (named, root / Path(value).name) if p.is_dir()), path)
    if not path.is_dir():
        raise CheckpointError(
            f"{root}: no {name}/ folder ({path} is missing). A VILA checkpoint holds llm/, vision_tower/ "
            "and mm_projector/ beside config.json; copy the whole checkpoint folder"
        )
    return path


def _shard_names(index: Path) -> list[str]:
    """The safetensors files a model.safetensors.index.json maps tensors to."""
    weight_map = _read_json(index, RESTORE).get("weight_map", {})
    if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
        raise CheckpointError(f"{index}: weight_map is not a JSON object of tensor name -> file name; {RESTORE}")
    return sorted(set(weight_map.values()))


def _weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    """The folder's safetensors files (checked for truncation), or its pickle files when allowed."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = _shard_names(index)
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: shard {missing[0]} named in {index.name} is missing; copy it from the source")
        files = [folder / s for s in shards]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise CheckpointError(f"{folder}: no weights (*.safetensors) found; copy them from the source checkpoint")
    if not allow_pickle:
        raise CheckpointError(
            f"{pickles[0]}: pickle-only weights, which can run arbitrary code when loaded. Convert them to "
            "safetensors, or pass --allow-pickle if you trust where they came from"
        )
    return pickles


def tensor_shapes(files: list[Path]) -> dict[str, list[int]]:
    """Names and shapes from safetensors headers (truncation is caught here)."""
    shapes = {}
    for f in files:
        shapes.update({k: v["shape"] for k, v in read_header(f).items()})
    return shapes


def detect_family(config: dict, llm_config: dict) -> Family:
    nvila = (
        config.get("dynamic_s2")
        or config.get("image_aspect_ratio") in ("dynamic", "dynamic_s2")
        or llm_config.get("model_type") == "qwen2"
    )
    return FAMILIES["nvila" if nvila else "vila1.5"]


def load_checkpoint(path: str | Path, allow_pickle: bool = False) -> Checkpoint:
    """Read and validate a checkpoint folder; raises CheckpointError naming the file and the fix."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint folder; pass the folder that holds config.json")
    config = _read_top_config(root)
    llm_dir, vision_dir, projector_dir = (_subfolder(root, config, n) for n in SUBFOLDERS)
    llm_config, vision_config, projector_config, preprocessor = _read_part_configs(llm_dir, vision_dir, projector_dir)
    _check_llm_files(llm_dir)
    folders = (llm_dir, vision_dir, projector_dir)
    ckpt = Checkpoint(
        root=root,
        config=config,
        llm_dir=llm_dir,
        vision_dir=vision_dir,
        projector_dir=projector_dir,
        llm_config=llm_config,
        vision_config=vision_config,
        projector_config=projector_config,
        preprocessor=preprocessor,
        family=detect_family(config, llm_config),
        weights={name: _weight_files(folder, allow_pickle) for name, folder in zip(SUBFOLDERS, folders)},
    )
    _check_weights(ckpt)  # the sizes in the configs hold from here on
    _check_feature_selection(ckpt)
    _check_preprocessor(ckpt)
    return ckpt


def _read_top_config(root: Path) -> dict:
    """The top-level config.json, refused unless it names a VILA (llava_llama or vila) model."""
    path = root / "config.json"
    config = _read_json(path, "a VILA checkpoint has a top-level config.json (llava_llama or vila)")
    archs = " ".join(_names(config, "architectures", path)).lower()
    if config.get("model_type") not in ("llava_llama", "vila") and "llava" not in archs and "vila" not in archs:
        raise CheckpointError(
            f"{path}: model_type {config.get('model_type')!r} is not a VILA checkpoint "
            "(expected llava_llama or vila); point at the VILA checkpoint's top folder"
        )
    _check_top_config(config, path)
    return config


def _read_part_configs(llm_dir: Path, vision_dir: Path, projector_dir: Path) -> tuple[dict, dict, dict, dict]:
    """(llm, vision tower, projector, image processor) configs; a full SigLIP/CLIP config gives its vision part."""
    llm_config = _read_json(llm_dir / "config.json", "copy llm/config.json from the source checkpoint")
    vision_config = _read_json(vision_dir / "config.json", "copy vision_tower/config.json from the source checkpoint")
    projector_config = _read_json(projector_dir / "config.json", "copy mm_projector/config.json from the source")
    preprocessor = _read_json(
        vision_dir / "preprocessor_config.json", "copy the image processor's preprocessor_config.json into vision_tower/"
    )
    nested = vision_config.get("vision_config", vision_config)  # full SigLIP/CLIP configs nest it
    if not isinstance(nested, dict):
        raise CheckpointError(f"{vision_dir / 'config.json'}: vision_config holds {_describe(nested)}; {RESTORE}")
    _check_llm_config(llm_config, llm_dir / "config.json")
    _check_vision_config(nested, vision_dir / "config.json")
    _check_projector_type(projector_dir, projector_config)
    return llm_config, nested, projector_config, preprocessor


# ---- what the configs hold: the keys the properties above (and the model classes) read -------------------------


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _count(value) -> bool:
    """A positive integer (JSON true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _wrong(path: Path, config: dict, key: str, expected: str) -> CheckpointError:
    found = f"is {_show(config[key])}" if key in config else "is missing"
    return CheckpointError(f"{path}: {key} {found}, expected {expected}; {RESTORE}")


def _int(config: dict, key: str, path: Path, required: bool = True) -> int | None:
    """config[key], a positive integer; None where it is absent or null and not required."""
    value = config.get(key)
    if value is None and not required:
        return None
    if not _count(value):
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


def _names(config: dict, key: str, path: Path) -> list[str]:
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


def _check_top_config(config: dict, path: Path) -> None:
    """Types and values of the top-level keys the Checkpoint reads (the select layer waits for the tower)."""
    _name(config, "model_type", path)
    for key in ("conv_mode", "chat_template"):
        _name(config, key, path)
    _one_of(config, "image_aspect_ratio", path, ASPECT_RATIOS, "resize")
    _one_of(config, "mm_vision_select_feature", path, SELECT_FEATURES, "cls_patch")
    frames = config.get("num_video_frames")
    if frames not in (None, 0) and not _count(frames):
        raise _wrong(path, config, "num_video_frames", "a number of frames (0 or null: 8)")
    if _flag(config, "s2", path) | _flag(config, "dynamic_s2", path):
        scales = config.get("s2_scales")
        pieces = scales.split(",") if isinstance(scales, str) else []
        if not pieces or not all(p.strip().isdigit() and int(p) > 0 for p in pieces):
            raise _wrong(path, config, "s2_scales", 'comma-separated image sizes such as "336,672,1008"')


def _check_feature_selection(ckpt: Checkpoint) -> None:
    """mm_vision_select_layer indexes the tower's hidden states: 0 (the embeddings) to n_layers, or from the end."""
    path, n_layers = ckpt.root / "config.json", ckpt.vision_config["num_hidden_layers"]
    layer = ckpt.config.get("mm_vision_select_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -(n_layers + 1) <= layer <= n_layers:
        raise CheckpointError(
            f"{path}: mm_vision_select_layer is {_show(layer)}, expected an integer from {-(n_layers + 1)} to "
            f"{n_layers} for this {n_layers}-layer tower (VILA uses -2); {RESTORE}"
        )


LLM_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
LLM_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "tokenizer_model_max_length", "model_max_length")  # or null
VISION_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                "patch_size")  # fmt: skip


def _check_llm_config(config: dict, path: Path) -> None:
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
            f"{path}: quantization_config {_show(q['quant_method'])} (bits {_show(q.get('bits'))}, version "
            f"{_show(q.get('version'))}) is not supported; vila-edge reads fp16/bf16 checkpoints and the AWQ int4 GEMM "
            "ones vila-edge quantize writes"
        )
    group = q.get("group_size")
    if not _count(group):
        raise CheckpointError(f"{path}: quantization_config group_size is {_show(group)}, expected a positive "
                              f"integer; {RESTORE}")  # fmt: skip


def _check_vision_config(config: dict, path: Path) -> None:
    _names(config, "architectures", path)
    _name(config, "model_type", path)
    for key in VISION_SIZES:
        _int(config, key, path)
    if config["hidden_size"] % config["num_attention_heads"]:
        raise CheckpointError(f"{path}: hidden_size {config['hidden_size']} is not a multiple of num_attention_heads "
                              f"{config['num_attention_heads']}; {RESTORE}")  # fmt: skip
    if config["patch_size"] > config["image_size"]:
        raise CheckpointError(f"{path}: patch_size {config['patch_size']} is larger than image_size "
                              f"{config['image_size']}; {RESTORE}")  # fmt: skip


def _check_projector_type(projector_dir: Path, projector_config: dict) -> None:
    ptype = projector_config.get("mm_projector_type")
    if not isinstance(ptype, str) or ptype not in PROJECTORS:
        raise CheckpointError(
            f"{projector_dir / 'config.json'}: unknown mm_projector_type {_show(ptype)}; known: {', '.join(PROJECTORS)}"
        )


def _number(value, positive: bool = False) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (value > 0 or not positive)


def _pixels(value, path: Path, key: str, edge: bool) -> tuple[int, int]:
    """(width, height) of an image processor size: an integer, {height, width}, or (edge) {shortest_edge}."""
    if _count(value):
        return value, value
    if isinstance(value, dict):
        if edge and "shortest_edge" in value:
            if _count(value["shortest_edge"]):
                return value["shortest_edge"], value["shortest_edge"]
        elif _count(value.get("width")) and _count(value.get("height")):
            return value["width"], value["height"]
    shapes = "an integer, {height, width}" + (" or {shortest_edge}" if edge else "")
    raise CheckpointError(f"{path}: {key} is {_show(value)}, expected a size in pixels ({shapes}); {RESTORE}")


def _check_preprocessor(ckpt: Checkpoint) -> None:
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
    crop = pre.get("crop_size")
    if pre.get("do_center_crop") and crop:
        size = _pixels(crop, path, "crop_size", edge=False)
    else:
        size = _pixels(pre.get("size"), path, "size", edge=True)
    if size != (ckpt.image_size, ckpt.image_size):
        raise CheckpointError(
            f"{path}: the processor makes {size[0]}x{size[1]} images, the vision tower takes {ckpt.image_size}x"
            f"{ckpt.image_size} ({ckpt.vision_dir / 'config.json'}); copy the tower's own preprocessor_config.json from the source checkpoint"
        )


def _check_llm_files(llm_dir: Path) -> None:
    """The tokenizer's files (and the generation config) parse, as transformers will read them."""
    if not (llm_dir / "tokenizer_config.json").is_file() or not any(
        (llm_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")
    ):
        raise CheckpointError(
            f"{llm_dir}: tokenizer files missing (need tokenizer_config.json and tokenizer.json or tokenizer.model); "
            "copy them from the source checkpoint"
        )
    _check_tokenizer_config(_read_json(llm_dir / "tokenizer_config.json", RESTORE), llm_dir / "tokenizer_config.json")
    for name, check in (("special_tokens_map.json", _check_special_tokens), ("added_tokens.json", None),
                        ("generation_config.json", _check_generation_config)):  # fmt: skip
        if (llm_dir / name).is_file():
            config = _read_json(llm_dir / name, RESTORE)
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
    tok = _read_json(path, RESTORE)
    model = tok.get("model")
    if not isinstance(model, dict) or model.get("type", "BPE") not in TOKENIZER_MODELS:
        raise _wrong(path, tok, "model", f"an object whose type is one of {', '.join(TOKENIZER_MODELS)}")
    vocab = list if model.get("type") == "Unigram" else dict
    if not isinstance(model.get("vocab"), vocab):
        raise CheckpointError(f"{path}: the model's vocab is {_show(model.get('vocab'))}, expected a "
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


# ---- the weights against the configs -------------------------------------------------------------------------


def _check_weights(ckpt: Checkpoint) -> None:
    """Every safetensors header read (truncated files are caught here), and the configs' sizes checked against them."""
    shapes = {name: tensor_shapes(ckpt.weights[name]) for name in SUBFOLDERS if not ckpt.is_pickle(name)}
    if "mm_projector" in shapes:  # first: its message names both sides of a mismatch
        _check_projector_widths(ckpt, shapes["mm_projector"])
    if "model.embed_tokens.weight" in shapes.get("llm", {}):  # a whole LLM: a partial set of tensors is not compared
        _check_sizes(ckpt.llm_dir / "config.json", _llm_sizes(ckpt.llm_config, shapes["llm"]))
    if "vision_tower" in shapes:
        tower = VISION_TOWERS.get(ckpt.vision_kind)
        sizes = _vision_sizes(ckpt.vision_config, shapes["vision_tower"], bool(tower and tower.cls_token))
        _check_sizes(ckpt.vision_dir / "config.json", sizes)


def _layer_count(shapes: dict, prefix: str) -> int | None:
    """How many layers the weights hold: distinct N in `{prefix}N.` (None where there are none)."""
    return len({name[len(prefix) :].split(".", 1)[0] for name in shapes if name.startswith(prefix)}) or None


def _rows(shapes: dict, linear: str) -> int | None:
    """Output features of a linear: rows of its weight [out, in], or of an AWQ GEMM qweight [in, out / 8]."""
    if f"{linear}.weight" in shapes:
        return shapes[f"{linear}.weight"][0]
    if f"{linear}.qweight" in shapes:
        return shapes[f"{linear}.qweight"][1] * 8
    return None


def _llm_sizes(c: dict, shapes: dict) -> list[tuple[str, int, int | None, str]]:
    """(what the config says, its value, what the weights hold or None, where) for the sizes of the LLM."""
    embed = shapes["model.embed_tokens.weight"]
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or c["num_attention_heads"]
    attn = "model.layers.0.self_attn"
    return [
        ("vocab_size", c["vocab_size"], embed[0], "model.embed_tokens.weight"),
        ("hidden_size", c["hidden_size"], embed[1], "model.embed_tokens.weight"),
        ("num_hidden_layers", c["num_hidden_layers"], _layer_count(shapes, "model.layers."), "model.layers.*"),
        ("intermediate_size", c["intermediate_size"], _rows(shapes, "model.layers.0.mlp.gate_proj"), "gate_proj"),
        (f"num_attention_heads × head_dim ({c['num_attention_heads']} × {head_dim})", c["num_attention_heads"] * head_dim,
         _rows(shapes, f"{attn}.q_proj"), "q_proj"),
        (f"num_key_value_heads × head_dim ({kv_heads} × {head_dim})", kv_heads * head_dim, _rows(shapes, f"{attn}.k_proj"),
         "k_proj"),
    ]  # fmt: skip


def _vision_sizes(c: dict, shapes: dict, cls_token: bool) -> list[tuple[str, int, int | None, str]]:
    """The same for the vision tower (transformers 4 saved its tensors under vision_model.)."""
    shapes = {k.removeprefix("vision_model."): v for k, v in shapes.items()}
    patch = shapes.get("embeddings.patch_embedding.weight") or [None, None, None]  # [hidden, 3, p, p]
    positions = (shapes.get("embeddings.position_embedding.weight") or [None])[0]
    grid = c["image_size"] // c["patch_size"]
    return [
        ("hidden_size", c["hidden_size"], patch[0], "embeddings.patch_embedding.weight"),
        ("patch_size", c["patch_size"], patch[2], "embeddings.patch_embedding.weight"),
        (f"positions for image_size {c['image_size']} / patch_size {c['patch_size']}", grid**2 + cls_token, positions,
         "embeddings.position_embedding.weight"),
        ("num_hidden_layers", c["num_hidden_layers"], _layer_count(shapes, "encoder.layers."), "encoder.layers.*"),
        ("intermediate_size", c["intermediate_size"], _rows(shapes, "encoder.layers.0.mlp.fc1"), "fc1"),
    ]  # fmt: skip


def _check_sizes(path: Path, sizes: list[tuple[str, int, int | None, str]]) -> None:
    for what, want, got, tensor in sizes:
        if got is not None and got != want:
            raise CheckpointError(
                f"{path}: {what} is {want}, the weights hold {got} ({tensor}); {RESTORE}, "
                "or the weights beside it come from another model"
            )


def _check_projector_widths(ckpt: Checkpoint, shapes: dict[str, list[int]]) -> None:
    spec = PROJECTORS[ckpt.projector_type]
    where = ckpt.weights["mm_projector"][0]
    for key in (spec.first_key, spec.last_key):
        if key not in shapes:
            raise CheckpointError(
                f"{where}: tensor {key} missing for projector type {ckpt.projector_type}; "
                "mm_projector/config.json names the wrong type or the weights are from another projector"
            )
    want_in = ckpt.mm_hidden * spec.downsample**2
    got_in = shapes[spec.first_key][1]
    if got_in != want_in:
        factor = f" × {spec.downsample ** 2}" if spec.downsample > 1 else ""
        source = ckpt.vision_dir / "config.json"
        if ckpt.s2_scales:
            source = f"{source} hidden_size × {len(ckpt.s2_scales)} S2 scales in {ckpt.root / 'config.json'}"
        raise CheckpointError(
            f"{where}: projector input width {got_in} does not match the vision tower "
            f"(hidden {ckpt.mm_hidden}{factor} = {want_in}, from {source}); "
            "vision_tower/ and mm_projector/ come from different models"
        )
    got_out = shapes[spec.last_key][0]
    if got_out != ckpt.llm_hidden:
        raise CheckpointError(
            f"{where}: projector output width {got_out} does not match the LLM hidden size {ckpt.llm_hidden} "
            f"({ckpt.llm_dir / 'config.json'}); llm/ and mm_projector/ come from different models"
        )

"""Find, read and validate a VILA-layout checkpoint folder (llm/, vision_tower/, mm_projector/).

Validation reads configs and safetensors headers only; no weights are loaded here.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from .arch import FAMILIES, PROJECTORS, TEMPLATES, VISION_TOWERS, Family, get_llm, tokens_after, tower_kind
from .errors import CheckpointError
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


def _read_json(path: Path, fix: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); restore it from the source checkpoint") from None


def _subfolder(root: Path, config: dict, name: str) -> Path:
    """VILA resolves a dict-valued `<name>_cfg` to root/<name>; a string value is a path."""
    value = config.get(f"{name}_cfg")
    if isinstance(value, str):
        path = Path(value)
        path = path if path.is_absolute() else root / path
        if not path.is_dir():
            path = root / Path(value).name
    else:
        path = root / name
    if not path.is_dir():
        raise CheckpointError(
            f"{root}: no {name}/ folder ({path} is missing). A VILA checkpoint holds llm/, vision_tower/ "
            "and mm_projector/ beside config.json; copy the whole checkpoint folder"
        )
    return path


def _weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    """The folder's safetensors files (checked for truncation), or its pickle files when allowed."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index, "copy it from the source checkpoint").get("weight_map", {}).values()))
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
    _check_tokenizer_files(llm_dir)
    _check_projector_type(projector_dir, projector_config)
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
    _check_weights(ckpt)
    return ckpt


def _read_top_config(root: Path) -> dict:
    """The top-level config.json, refused unless it names a VILA (llava_llama or vila) model."""
    config = _read_json(root / "config.json", "a VILA checkpoint has a top-level config.json (llava_llama or vila)")
    archs = " ".join(config.get("architectures") or []).lower()
    if config.get("model_type") not in ("llava_llama", "vila") and "llava" not in archs and "vila" not in archs:
        raise CheckpointError(
            f"{root / 'config.json'}: model_type {config.get('model_type')!r} is not a VILA checkpoint "
            "(expected llava_llama or vila); point at the VILA checkpoint's top folder"
        )
    return config


def _read_part_configs(llm_dir: Path, vision_dir: Path, projector_dir: Path) -> tuple[dict, dict, dict, dict]:
    """(llm, vision tower, projector, image processor) configs; a full SigLIP/CLIP config gives its vision part."""
    llm_config = _read_json(llm_dir / "config.json", "copy llm/config.json from the source checkpoint")
    vision_config = _read_json(vision_dir / "config.json", "copy vision_tower/config.json from the source checkpoint")
    projector_config = _read_json(projector_dir / "config.json", "copy mm_projector/config.json from the source")
    preprocessor = _read_json(
        vision_dir / "preprocessor_config.json", "copy the image processor's preprocessor_config.json into vision_tower/"
    )
    vision_config = vision_config.get("vision_config", vision_config)  # full SigLIP/CLIP configs nest it
    get_llm(llm_config.get("model_type"), str(llm_dir / "config.json"))
    return llm_config, vision_config, projector_config, preprocessor


def _check_tokenizer_files(llm_dir: Path) -> None:
    if not (llm_dir / "tokenizer_config.json").is_file() or not any(
        (llm_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")
    ):
        raise CheckpointError(
            f"{llm_dir}: tokenizer files missing (need tokenizer_config.json and tokenizer.json or tokenizer.model); "
            "copy them from the source checkpoint"
        )


def _check_projector_type(projector_dir: Path, projector_config: dict) -> None:
    ptype = projector_config.get("mm_projector_type")
    if ptype not in PROJECTORS:
        raise CheckpointError(
            f"{projector_dir / 'config.json'}: unknown mm_projector_type {ptype!r}; known: {', '.join(PROJECTORS)}"
        )


def _check_weights(ckpt: Checkpoint) -> None:
    """Every safetensors header read (truncated files are caught here), and the projector's widths checked."""
    for name in SUBFOLDERS:
        if not ckpt.is_pickle(name):
            tensor_shapes(ckpt.weights[name])
    if not ckpt.is_pickle("mm_projector"):
        _check_projector_widths(ckpt)


def _check_projector_widths(ckpt: Checkpoint) -> None:
    spec = PROJECTORS[ckpt.projector_type]
    shapes = tensor_shapes(ckpt.weights["mm_projector"])
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
        raise CheckpointError(
            f"{where}: projector input width {got_in} does not match the vision tower "
            f"(hidden {ckpt.mm_hidden}{factor} = {want_in}); vision_tower/ and mm_projector/ come from different models"
        )
    got_out = shapes[spec.last_key][0]
    if got_out != ckpt.llm_hidden:
        raise CheckpointError(
            f"{where}: projector output width {got_out} does not match the LLM hidden size {ckpt.llm_hidden} "
            f"({ckpt.llm_dir / 'config.json'}); llm/ and mm_projector/ come from different models"
        )

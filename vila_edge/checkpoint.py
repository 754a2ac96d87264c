"""Find, read and validate a VILA-layout checkpoint folder (llm/, vision_tower/, mm_projector/).

Validation reads the configs, the tokenizer's files and the safetensors headers; no weights are loaded here.
Every value the properties below (and the model classes after them) read is checked where it is read, so a
broken file stops the load with a CheckpointError naming that file, before any model is built.
"""

from dataclasses import dataclass, field
from pathlib import Path

from .arch import FAMILIES, PROJECTORS, TEMPLATES, VISION_TOWERS, Family, tokens_after, tower_kind, tower_preprocessing
from .config_checks import (
    RESTORE,
    check_feature_selection,
    check_llm_config,
    check_llm_files,
    check_preprocessor,
    check_projector_type,
    check_top_config,
    check_vision_config,
    describe,
    processor_size,
    read_json,
    string_list,
)
from .errors import CheckpointError
from .formats import CHECKPOINT_PARTS as SUBFOLDERS
from .formats import PICKLE_SUFFIXES
from .llamavid_format import LlamaVid, llamavid_fields, vila_llamavid
from .llava_format import layout_error, llava_fields, renamed_shapes
from .llm_awq import llm_awq_weights
from .safetensors_header import read_header
from .tiling import VisionLayout, layout_from_config
from .weight_checks import check_weights


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
    preprocessor: dict  # preprocessor_config.json, or what the tower's VILA class hard-codes (arch.tower_preprocessing)
    family: Family
    weights: dict[str, list[Path]] = field(repr=False)  # subfolder -> weight files
    # part -> llava_format.RULES naming its tensors, where they are not in a VILA folder under their own names
    renames: dict[str, tuple] = field(default_factory=dict, repr=False)
    layout: str = "vila"  # or "llava", "llava-hf" (llava_format.py), "llama-vid" (llamavid_format.py): read in place
    llamavid: LlamaVid | None = None  # LLaMA-VID's question-conditioned vision side (weights["vlm_att"])

    def shapes(self, part: str) -> dict[str, list[int]]:
        """{VILA-layout tensor name: shape} of a part, from its safetensors headers."""
        return renamed_shapes(tensor_shapes(self.weights[part]), self.renames.get(part), part)

    def recorded_conv_mode(self) -> tuple[str, str] | None:
        """The template config.json names (ours, or the remote-code conversions' chat_template), or a *.jinja."""
        for key in ("conv_mode", "chat_template"):
            if self.config.get(key) in TEMPLATES:
                return self.config[key], f"config.json {key}"
        for jinja in sorted(self.root.glob("*.jinja")):
            if jinja.stem in TEMPLATES:
                return jinja.stem, jinja.name
        return None

    @property
    def chat_template(self) -> str | dict | None:
        """The tokenizer's chat template as transformers finds it, read without transformers: chat_template.jinja
        and additional_chat_templates/*.jinja (a dict of them, unless the default is alone) over the one in
        tokenizer_config.json."""
        found = [("default", self.llm_dir / "chat_template.jinja")]
        found += [(f.stem, f) for f in sorted((self.llm_dir / "additional_chat_templates").glob("*.jinja"))]
        templates = {name: _read_text(path) for name, path in found if path.is_file()}
        if templates:
            return templates["default"] if list(templates) == ["default"] else templates
        template = read_json(self.llm_dir / "tokenizer_config.json", RESTORE).get("chat_template")
        if isinstance(template, list):  # named templates, checked by check_llm_files
            return {t["name"]: t["template"] for t in template}
        return template

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
    def vision_layout(self) -> VisionLayout:
        """How images become tower tiles: S2 scales, NVILA's dynamic tiling, or one resized image."""
        return layout_from_config(self.config, self.image_size, self.s2_scales)

    @property
    def mm_hidden(self) -> int:
        """Width of the features that reach the projector: vision hidden × number of S2 scales."""
        return self.vision_config["hidden_size"] * max(1, len(self.s2_scales))

    @property
    def vision_intermediate(self) -> int:
        """The tower's MLP width: intermediate_size, or DINOv2's hidden_size × mlp_ratio."""
        v = self.vision_config
        return v.get("intermediate_size") or int(v["hidden_size"] * v["mlp_ratio"])

    @property
    def llm_hidden(self) -> int:
        return self.llm_config["hidden_size"]

    @property
    def image_size(self) -> int:
        """The tower's input edge: its config's image_size, or the processor's for a tower whose table is
        interpolated to it (DINOv2's config states its 518 px table)."""
        tower = VISION_TOWERS.get(self.vision_kind)
        if tower is not None and tower.runs_at_processor_size and self.preprocessor:
            return processor_size(self.preprocessor, self.vision_dir / "preprocessor_config.json")[1]
        return int(self.vision_config["image_size"])

    @property
    def vision_tokens(self) -> int:
        """Tokens per image out of the tower after feature selection."""
        n = (self.image_size // self.vision_config["patch_size"]) ** 2
        tower = VISION_TOWERS.get(self.vision_kind)
        if tower is not None and tower.cls_token:  # CLIP's and InternViT's class token
            n += 1
        return n - 1 if self.select_feature == "patch" else n  # `patch` drops token 0

    @property
    def question_tokenizer_dir(self) -> Path | None:
        """LLaMA-VID's bert-base-uncased tokenizer folder (question.QuestionTokenizer), None for other families."""
        return self.llamavid.tokenizer_dir if self.llamavid is not None else None

    @property
    def tokens_per_image(self) -> int:
        """LLM tokens per image (LLaMA-VID: per frame, its context token and content tokens)."""
        if self.llamavid is not None:
            return 1 + self.llamavid.content_tokens((self.image_size // self.vision_config["patch_size"]) ** 2)
        return tokens_after(self.vision_tokens, PROJECTORS[self.projector_type].downsample)

    @property
    def model_max_length(self) -> int:
        c = self.llm_config
        return int(c.get("tokenizer_model_max_length") or c.get("model_max_length") or c["max_position_embeddings"])


# ---- reading the folder -----------------------------------------------------------------------------------


def _subfolder(root: Path, config: dict, name: str) -> Path:
    """VILA resolves a dict-valued `<name>_cfg` to root/<name>; a string value is a path, often one on the machine
    that trained it (then the folder of that name here is taken, else root/<name>)."""
    value = config.get(f"{name}_cfg")
    path = root / name
    if isinstance(value, str):
        named = Path(value) if Path(value).is_absolute() else root / value
        path = next((p for p in (named, root / Path(value).name) if p.is_dir()), path)
    if not path.is_dir():  # names the layouts there are and the one this folder most resembles
        raise layout_error(root, config, name)
    return path


def _shard_names(index: Path) -> list[str]:
    """The safetensors files a model.safetensors.index.json maps tensors to."""
    weight_map = read_json(index, RESTORE).get("weight_map", {})
    if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
        raise CheckpointError(f"{index}: weight_map is not a JSON object of tensor name -> file name; {RESTORE}")
    return sorted(set(weight_map.values()))


def _weight_files(folder: Path, allow_pickle: bool, llm_awq: bool = False) -> list[Path]:
    """The folder's safetensors files (checked for truncation), or its pickle files when allowed (llm-awq's dump
    of a VILA1.5-*-AWQ llm/, beside an index whose shards are absent, only where `llm_awq`: quantize imports it)."""
    if not any(folder.glob("*.safetensors")) and (dump := llm_awq_weights(folder, allow_pickle, llm_awq)):
        return [dump]
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


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); {RESTORE}") from None


def tensor_shapes(files: list[Path]) -> dict[str, list[int]]:
    """Names and shapes from safetensors headers (truncation is caught here)."""
    shapes = {}
    for f in files:
        shapes.update({k: v["shape"] for k, v in read_header(f).items()})
    return shapes


def detect_family(config: dict, llm_config: dict) -> Family:
    if config.get("llamavid") is not None:
        return FAMILIES["llama-vid"]
    nvila = (
        config.get("dynamic_s2")
        or config.get("image_aspect_ratio") in ("dynamic", "dynamic_s2")
        or llm_config.get("model_type") == "qwen2"
    )
    return FAMILIES["nvila" if nvila else "vila1.5"]


def load_checkpoint(path: str | Path, allow_pickle: bool = False, vision_tower: str | None = None,
                    hf_processor: bool = False, llm_awq: bool = False, qformer_tokenizer: str | None = None) -> Checkpoint:
    """Read and validate a checkpoint folder (the VILA layout; LLaVA-1.5's two, read in place by llava_format with
    `vision_tower` and `hf_processor`; LLaMA-VID's, by llamavid_format with `vision_tower` and `qformer_tokenizer`);
    raises CheckpointError naming the file and the fix. llm_awq: see _weight_files."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint folder; pass the folder that holds config.json")
    config = _read_top_config(root)
    fields = (llamavid_fields(root, config, allow_pickle, vision_tower, qformer_tokenizer)
              or llava_fields(root, config, allow_pickle, vision_tower, hf_processor)
              or _vila_fields(root, config, allow_pickle, llm_awq))
    ckpt = Checkpoint(**fields, family=detect_family(fields["config"], fields["llm_config"]))
    check_weights(ckpt)  # the sizes in the configs hold from here on
    check_feature_selection(ckpt)
    check_preprocessor(ckpt)
    return ckpt


def _vila_fields(root: Path, config: dict, allow_pickle: bool, llm_awq: bool = False) -> dict:
    """The Checkpoint's fields (family aside) of a VILA-layout folder: its subfolders, their configs and weights."""
    folders = dict(zip(("llm_dir", "vision_dir", "projector_dir"), (_subfolder(root, config, n) for n in SUBFOLDERS)))
    configs = zip(("llm_config", "vision_config", "projector_config", "preprocessor"), _read_part_configs(*folders.values()))
    check_llm_files(folders["llm_dir"])
    weights = {name: _weight_files(folder, allow_pickle, llm_awq) for name, folder in zip(SUBFOLDERS, folders.values())}
    extra = vila_llamavid(root, config, allow_pickle)  # LLaMA-VID's vlm_att/
    weights.update(extra.pop("extra_weights", {}))
    return dict(root=root, config=config, **folders, **dict(configs), weights=weights, **extra)


def _read_top_config(root: Path) -> dict:
    """The top-level config.json, refused unless it names a VILA (llava_llama or vila) model."""
    path = root / "config.json"
    config = read_json(path, "a VILA checkpoint has a top-level config.json (llava_llama or vila)")
    archs = " ".join(string_list(config, "architectures", path)).lower()
    if config.get("model_type") not in ("llava_llama", "vila") and "llava" not in archs and "vila" not in archs:
        raise layout_error(root, config)
    check_top_config(config, path)
    return config


def _read_part_configs(llm_dir: Path, vision_dir: Path, projector_dir: Path) -> tuple[dict, dict, dict, dict]:
    """(llm, vision tower, projector, image processor) configs; a full SigLIP/CLIP config gives its vision part.
    InternViT's processor (its preprocessor_config.json names only the class) is the one VILA's tower class builds."""
    llm_config = read_json(llm_dir / "config.json", "copy llm/config.json from the source checkpoint")
    vision_config = read_json(vision_dir / "config.json", "copy vision_tower/config.json from the source checkpoint")
    projector_config = read_json(projector_dir / "config.json", "copy mm_projector/config.json from the source")
    nested = vision_config.get("vision_config", vision_config)  # full SigLIP/CLIP configs nest it
    if not isinstance(nested, dict):
        raise CheckpointError(f"{vision_dir / 'config.json'}: vision_config holds {describe(nested)}; {RESTORE}")
    check_llm_config(llm_config, llm_dir / "config.json")
    check_vision_config(nested, vision_dir / "config.json")
    preprocessor = tower_preprocessing(nested) or read_json(
        vision_dir / "preprocessor_config.json", "copy the image processor's preprocessor_config.json into vision_tower/"
    )
    check_projector_type(projector_dir, projector_config)
    return llm_config, nested, projector_config, preprocessor

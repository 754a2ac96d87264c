"""LLaVA-1.5 folders read as the VILA layout, in place: which part each tensor belongs to and its VILA-layout name
(rules as data), the VILA configs made from LLaVA's, the CLIP tower found without the network, and the one-line
message for a folder in no layout vila-edge reads. Pure (configs, file names and safetensors headers; no torch):
checkpoint.py builds the Checkpoint from what `llava_fields` returns, part_weights.py reads the tensors.

- `llava`: liuhaotian/llava-v1.5-7b / -13b as published (LLaVA c121f04 `model/builder.py`): a flat
  LlavaLlamaForCausalLM config.json (Llama keys + mm_*), pickle shards at the root holding the LLM and
  `model.mm_projector.{0,2}`, the tokenizer beside them, and the CLIP tower named by hub id (`mm_vision_tower`).
- `llava-hf`: llava-hf/llava-1.5-7b-hf (LlavaForConditionalGeneration): text_config / vision_config, one set of
  safetensors with the tower inside, in transformers 4.x names (`language_model.model.*`, `vision_tower.vision_model.*`,
  `multi_modal_projector.linear_{1,2}`) or 5.x ones (`model.language_model.*`, `model.vision_tower.*`, `lm_head`).

Both run as LLaVA-1.5 was trained unless `hf_processor`: `pad` (mm_utils.py expand2square with the mean colour),
hidden_states[-2] without CLS (clip_encoder.py feature_select, `patch`: 576 tokens at 336 px), mlp2x_gelu
(multimodal_projector/builder.py), vicuna_v1 (conversation.py conv_vicuna_v1). `hf_processor` takes llava-hf's hub
processor (shortest edge + centre crop, no pad) and chat template ("USER: <image>\\n... ASSISTANT:", no system
prompt), which transformers uses and LLaVA-1.5 was not trained with.
"""

import os
from pathlib import Path

from .config_checks import (
    RESTORE,
    check_llm_config,
    check_llm_files,
    check_projector_type,
    check_vision_config,
    read_json,
    shown,
)
from .errors import CheckpointError, UnsupportedError, UsageError
from .hf_format import HF_MODEL_TYPES
from .safetensors_header import read_header

# (source prefix, part, VILA-layout prefix): the first rule whose prefix a tensor name starts with decides its part
# and name; a tensor no rule matches (or ending in DROPPED) is not read.
RULES = {
    "llava": (
        ("model.mm_projector.", "mm_projector", "layers."),
        ("model.vision_tower.vision_tower.", "vision_tower", ""),  # a fine-tune's own tower (unfreeze_mm_vision_tower)
        ("model.", "llm", "model."),
        ("lm_head.", "llm", "lm_head."),
    ),
    "llava-hf": (
        ("language_model.model.", "llm", "model."),  # transformers 4.x names (the hub's files)
        ("language_model.lm_head.", "llm", "lm_head."),
        ("vision_tower.vision_model.", "vision_tower", "vision_model."),
        ("multi_modal_projector.linear_1.", "mm_projector", "layers.0."),
        ("multi_modal_projector.linear_2.", "mm_projector", "layers.2."),
        ("model.language_model.", "llm", "model."),  # transformers 5.x names (conversion_mapping.py "llava")
        ("lm_head.", "llm", "lm_head."),
        ("model.vision_tower.vision_model.", "vision_tower", "vision_model."),
        ("model.vision_tower.", "vision_tower", "vision_model."),  # 5.x CLIPVisionModel has no vision_model level
        ("model.multi_modal_projector.linear_1.", "mm_projector", "layers.0."),
        ("model.multi_modal_projector.linear_2.", "mm_projector", "layers.2."),
    ),
    "clip": (("vision_model.", "vision_tower", "vision_model."),),  # the hub tower: CLIPModel, its text half left out
}
DROPPED = (".rotary_emb.inv_freq",)  # transformers 4.31 saved the rotary buffer; it is recomputed

# transformers' defaults for the keys llava-hf's text_config / vision_config leave out (LlamaConfig,
# CLIPVisionConfig; tests/test_llava.py checks them against the installed transformers).
LLAMA_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "hidden_act": "silu", "max_position_embeddings": 2048,
                  "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
CLIP_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
                        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
# Keys of the flat LLaVA config that are LLaVA's, not the LLM's (LLaVA train.py sets them on the Llama config).
LLAVA_KEY_PREFIXES = ("mm_", "image_", "tune_", "freeze_", "use_mm", "unfreeze", "vision_tower", "_name_or_path")
SELECT_STRATEGIES = {"default": "patch", "full": "cls_patch"}  # llava-hf vision_feature_select_strategy
HF_TEMPLATE = "llava_hf"  # arch.TEMPLATES: llava-hf's chat_template.json (no system prompt)

LAYOUTS = (
    "VILA (config.json with llm_cfg / vision_tower_cfg / mm_projector_cfg beside llm/, vision_tower/, mm_projector/)",
    "LLaVA-1.5 original (a flat LlavaLlamaForCausalLM config.json with mm_vision_tower, weights at the root)",
    "llava-hf (LlavaForConditionalGeneration: text_config / vision_config, model_type llava)",
    "LLaMA-VID (a flat LlavaLlamaAttForCausalLM config.json with bert_type and mm_vision_tower eva_vit_g.pth)",
    "HF-format NVILA (text_config / vision_config, model_type nvila / vila: `vila-edge convert` it first)",
    "TinyChat / llm-awq -AWQ (the VILA layout with llm/*.pt)",
)


def rename(name: str, rules: tuple, part: str) -> str | None:
    """name's VILA-layout name in `part`, or None where it belongs to another part or to none."""
    if name.endswith(DROPPED):
        return None
    for prefix, to_part, to_prefix in rules:
        if name.startswith(prefix):
            return to_prefix + name[len(prefix):] if to_part == part else None
    return None


def renamed_shapes(shapes: dict[str, list[int]], rules: tuple | None, part: str) -> dict[str, list[int]]:
    """A part's {VILA-layout name: shape} from its files' headers (rules None: the names are already VILA's)."""
    if not rules:
        return shapes
    return {new: shape for name, shape in shapes.items() if (new := rename(name, rules, part)) is not None}


# ---- which layout ----------------------------------------------------------------------------------------


def llava_layout(config: dict) -> str | None:
    """"llava" or "llava-hf" where config.json is one of LLaVA-1.5's, else None."""
    archs = " ".join(a for a in config.get("architectures") or [] if isinstance(a, str))
    if any(f"{n}_cfg" in config for n in ("llm", "vision_tower", "mm_projector")):
        return None
    if isinstance(_tower_name(config), str) and "LlavaLlamaForCausalLM" in archs:
        return "llava"
    hf = isinstance(config.get("text_config"), dict) and isinstance(config.get("vision_config"), dict)
    if hf and config.get("model_type") == "llava" and "LlavaForConditionalGeneration" in (archs or "LlavaForConditionalGeneration"):
        return "llava-hf"
    return None


def _tower_name(config: dict):
    return config.get("mm_vision_tower", config.get("vision_tower"))


def layout_error(root: Path, config: dict, missing: str | None = None) -> Exception:
    """The one-line refusal of a folder in no layout vila-edge reads: the layouts there are, the one it most
    resembles and why, and the fix."""
    archs = ", ".join(a for a in config.get("architectures") or [] if isinstance(a, str)) or "none"
    model_type = config.get("model_type")
    vila = any(f"{n}_cfg" in config for n in ("llm", "vision_tower", "mm_projector"))
    if isinstance(config.get("text_config"), dict) and model_type in HF_MODEL_TYPES:
        return UnsupportedError(
            f"{root}: an HF-format conversion (model_type {model_type!r}, weights prefixed llm. / vision_tower. / "
            f"mm_projector. in one folder), not the VILA layout; rewrite it with `vila-edge convert {root} -o DST` "
            "and load DST")
    if vila and missing is not None:
        near = (f"the VILA layout (model_type {shown(model_type)}), but {missing}/ is missing: no {missing}/ folder; "
                "copy the whole checkpoint folder")
    elif isinstance(_tower_name(config), str):
        near = (f"the LLaVA-1.5 original layout (a flat config with mm_vision_tower {shown(_tower_name(config))}), "
                f"but architectures {archs} is not LlavaLlamaForCausalLM (nor LLaMA-VID's LlavaLlamaAttForCausalLM): a "
                "LLaVA descendant (LLaVA-NeXT, ...) that vila-edge does not run")
    elif isinstance(config.get("text_config"), dict) or isinstance(config.get("vision_config"), dict):
        near = (f"llava-hf (text_config / vision_config), but model_type {shown(model_type)} / architectures {archs} "
                "is not LlavaForConditionalGeneration (llava); only LLaVA-1.5's conversion is read")
    elif list((root / "llm").glob("*.pt")):
        near = "a TinyChat / llm-awq -AWQ repo (llm/*.pt), with a part missing"
    elif missing is not None:
        near = f"the VILA layout, but with no {missing}/ folder and no llm_cfg / vision_tower_cfg / mm_projector_cfg"
    else:
        near = f"none of them (model_type {shown(model_type)}, architectures {archs})"
    return CheckpointError(f"{root}: not a checkpoint layout vila-edge reads. Layouts: {'; '.join(LAYOUTS)}. "
                           f"This folder most resembles {near}")


# ---- the CLIP tower --------------------------------------------------------------------------------------


def hub_cache() -> Path:
    """The local Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def _cached_snapshot(hub_id: str) -> Path | None:
    """The snapshot refs/main points at, else the newest, of hub_id in the local cache (None where none is)."""
    repo = hub_cache() / f"models--{hub_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.is_file() and (repo / "snapshots" / ref.read_text().strip() / "config.json").is_file():
        return repo / "snapshots" / ref.read_text().strip()
    snapshots = [s for s in (repo / "snapshots").glob("*") if (s / "config.json").is_file()]
    return max(snapshots, key=lambda s: s.stat().st_mtime) if snapshots else None


def resolve_tower(root: Path, name: str, option: str | None) -> Path:
    """The CLIP folder mm_vision_tower names: a local path in config.json, else --vision-tower, else the HF cache."""
    named = Path(name).expanduser()
    for path in (named if named.is_absolute() else root / named, named):
        if (path / "config.json").is_file():
            return path
    if option is not None:
        if not (Path(option) / "config.json").is_file():
            raise CheckpointError(f"--vision-tower {option}: no config.json there; pass the folder of a local copy of "
                                  f"{name} (config.json, preprocessor_config.json, weights)")
        return Path(option)
    cached = _cached_snapshot(name)
    if cached is not None:
        return cached
    raise CheckpointError(
        f"{root / 'config.json'}: the vision tower {name!r} was found nowhere: not a folder at that path (nor under "
        f"{root}), no --vision-tower PATH given, not in the Hugging Face cache "
        f"({hub_cache()}/models--{name.replace('/', '--')}/snapshots/*; $HF_HOME sets it); pass --vision-tower with "
        f"a local copy of {name} (e.g. `huggingface-cli download {name}` where there is network)")


# ---- weight files ----------------------------------------------------------------------------------------


def weight_files(folder: Path, allow_pickle: bool) -> dict[Path, list[str] | None]:
    """{file: its tensor names (None for a pickle without an index)}: safetensors (by their index, else all), else
    the pickle shards of pytorch_model.bin.index.json (or pytorch_model*.bin), only with allow_pickle."""
    index = folder / "model.safetensors.index.json"
    files = _indexed(index) if index.is_file() else {f: None for f in sorted(folder.glob("*.safetensors"))}
    if files:
        return {f: names or list(read_header(f)) for f, names in files.items()}
    index = folder / "pytorch_model.bin.index.json"
    files = _indexed(index) if index.is_file() else {f: None for f in sorted(folder.glob("pytorch_model*.bin"))}
    if not files:
        raise CheckpointError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin) found; copy them from the "
                              "source checkpoint")
    if not allow_pickle:
        raise CheckpointError(f"{next(iter(files))}: pickle-only weights, which can run arbitrary code when loaded. "
                              "Convert them to safetensors, or pass --allow-pickle if you trust where they came from")
    return files


def _indexed(index: Path) -> dict[Path, list[str]]:
    weight_map = read_json(index, RESTORE).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: weight_map is not a JSON object of tensor name -> file name; {RESTORE}")
    files: dict[Path, list[str]] = {}
    for name, file in weight_map.items():
        files.setdefault(index.parent / file, []).append(name)
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        raise CheckpointError(f"{missing}: named in {index.name} but missing; copy it from the source")
    return dict(sorted(files.items()))


def part_files(files: dict[Path, list[str] | None], rules: tuple, part: str) -> list[Path]:
    """The files holding some tensor of `part` (a pickle without an index may hold any)."""
    return [f for f, names in files.items() if names is None or any(rename(n, rules, part) for n in names)]


# ---- the Checkpoint's fields -------------------------------------------------------------------------------


def llava_fields(root: Path, config: dict, allow_pickle: bool = False, vision_tower: str | None = None,
                 hf_processor: bool = False) -> dict | None:
    """The Checkpoint's fields (family aside) of a LLaVA-1.5 folder read in place, or None for any other folder:
    configs made VILA's, each part's files and rules, the tower resolved; everything checked that the VILA
    layout's loader checks from its files."""
    layout = llava_layout(config)
    if layout is None:
        if vision_tower is not None or hf_processor:
            raise UsageError(f"{root}: --vision-tower and --hf-processor read a LLaVA-1.5 folder; this one is in the "
                             "VILA layout (a converted or quantized LLaVA keeps its semantics in config.json): drop them")
        return None
    files = weight_files(root, allow_pickle)
    if layout == "llava":
        parts = _original(root, config, files, vision_tower, allow_pickle)
    else:
        parts = _llava_hf(root, config, files)
    llm, vision, projector, semantics, tower_dir, weights, renames = parts
    where = root / "config.json"
    check_llm_config(llm, where)
    check_vision_config(vision, where if tower_dir == root else tower_dir / "config.json")
    check_projector_type(root, projector)
    check_llm_files(root)
    pre_dir = root if layout == "llava-hf" else tower_dir
    preprocessor = _clip_processor(read_json(pre_dir / "preprocessor_config.json",
                                             f"copy preprocessor_config.json into {pre_dir}"))
    if hf_processor:
        semantics.update(image_aspect_ratio=None, conv_mode=HF_TEMPLATE)
    top = {"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama",
           "llm_cfg": {**llm, "_name_or_path": "./llm"}, "vision_tower_cfg": {**vision, "_name_or_path": "./vision_tower"},
           "mm_projector_cfg": {**projector, "_name_or_path": "./mm_projector"}, "hidden_size": llm["hidden_size"],
           "mm_hidden_size": vision["hidden_size"], "mm_use_im_start_end": False, **semantics,
           "vila_edge_convert": {"from_layout": layout, "vision_tower": str(tower_dir), "hf_processor": hf_processor,
                                 "semantics": dict(semantics)}}
    for part, found in weights.items():
        if not found:
            raise CheckpointError(f"{root}: no tensor of {part} among the weights (names {_prefixes(renames[part], part)}); "
                                  "a shard is missing or the weights come from another model; copy them again")
    return dict(root=root, config=top, llm_dir=root, vision_dir=tower_dir, projector_dir=root, llm_config=llm,
                vision_config=vision, projector_config=projector, preprocessor=preprocessor, weights=weights,
                renames=renames, layout=layout)


def _clip_processor(pre: dict) -> dict:
    """CLIPImageProcessor reads an integer size as the shortest edge and an integer crop_size as a square (OpenAI's
    CLIP files have both): written out, so that media.preprocess reads them the same."""
    pre = dict(pre)
    if isinstance(pre.get("size"), int) and not isinstance(pre["size"], bool):
        pre["size"] = {"shortest_edge": pre["size"]}
    if isinstance(pre.get("crop_size"), int) and not isinstance(pre["crop_size"], bool):
        pre["crop_size"] = {"height": pre["crop_size"], "width": pre["crop_size"]}
    return pre


def _prefixes(rules: tuple, part: str) -> str:
    return " / ".join(f"{p}*" for p, to, _ in rules if to == part)


def _original(root: Path, config: dict, files: dict, option: str | None, allow_pickle: bool) -> tuple:
    """liuhaotian/llava-v1.5-*: the LLM from the flat config, the tower's config from its CLIP folder and its weights
    from there, or from the shards where a fine-tune saved its own tower."""
    if config.get("mm_use_im_start_end"):
        raise UnsupportedError(f"{root / 'config.json'}: mm_use_im_start_end true (<im_start>/<im_end> around each "
                               "image) is not supported; LLaVA-1.5 trained without them")
    tower_dir = resolve_tower(root, _tower_name(config), option)
    llm = {k: v for k, v in config.items() if not k.startswith(LLAVA_KEY_PREFIXES) and k not in ("architectures",)}
    llm.update(model_type="llama", architectures=["LlamaForCausalLM"])
    vision = _clip_config(read_json(tower_dir / "config.json", f"copy config.json into {tower_dir}"), tower_dir)
    rules = RULES["llava"]
    tuned = any(rename(n, rules, "vision_tower") for names in files.values() for n in names or ())
    tower_files = files if tuned else weight_files(tower_dir, allow_pickle)
    tower_rules = rules if tuned else RULES["clip"]
    weights = {"llm": part_files(files, rules, "llm"), "vision_tower": part_files(tower_files, tower_rules, "vision_tower"),
               "mm_projector": part_files(files, rules, "mm_projector")}
    if not weights["mm_projector"] and (root / "mm_projector.bin").is_file():  # the projector alone, added later
        weights["mm_projector"] = [root / "mm_projector.bin"]
    aspect = config.get("image_aspect_ratio")
    semantics = {"image_aspect_ratio": "pad" if aspect == "pad" else None,  # LLaVA: anything else is the processor's
                 "mm_vision_select_layer": config.get("mm_vision_select_layer", -1),  # LLaVA train.py defaults
                 "mm_vision_select_feature": config.get("mm_vision_select_feature", "patch"), "conv_mode": "vicuna_v1"}
    projector = {"model_type": "v2l_projector", "mm_projector_type": config.get("mm_projector_type", "linear")}
    renames = {"llm": rules, "vision_tower": tower_rules, "mm_projector": rules}
    return llm, vision, projector, semantics, tower_dir, weights, renames


def _clip_config(config: dict, folder: Path) -> dict:
    """The vision half of a CLIP folder's config.json (a whole CLIPModel nests it) with transformers' defaults."""
    nested = config.get("vision_config", config)
    if not isinstance(nested, dict):
        raise CheckpointError(f"{folder / 'config.json'}: vision_config is not a JSON object; {RESTORE}")
    vision = {**CLIP_VISION_DEFAULTS, **{k: v for k, v in nested.items() if k != "_name_or_path"}}
    if "clip" not in str(vision.get("model_type", "clip")):
        raise UnsupportedError(f"{folder / 'config.json'}: a {vision.get('model_type')!r} tower; LLaVA-1.5 folders are "
                               "read with a CLIP tower only")
    vision.update(model_type="clip_vision_model", architectures=["CLIPVisionModel"])
    return vision


def _llava_hf(root: Path, config: dict, files: dict) -> tuple:
    """llava-hf/llava-1.5-*-hf: both halves' configs from text_config / vision_config, every weight in one set of shards."""
    where = root / "config.json"
    if config.get("projector_hidden_act", "gelu") != "gelu" or config.get("multi_modal_projector_bias") is False:
        raise UnsupportedError(f"{where}: projector_hidden_act {config.get('projector_hidden_act')!r} without the "
                               "LLaVA-1.5 mlp2x_gelu projector (gelu, with biases) is not supported")
    layer, strategy = config.get("vision_feature_layer", -2), config.get("vision_feature_select_strategy", "default")
    if not isinstance(layer, int) or strategy not in SELECT_STRATEGIES:
        raise UnsupportedError(f"{where}: vision_feature_layer {shown(layer)} / vision_feature_select_strategy "
                               f"{shown(strategy)}: one layer and {' or '.join(SELECT_STRATEGIES)} are supported")
    text = {k: v for k, v in config["text_config"].items() if k != "_name_or_path"}
    llm = {**LLAMA_DEFAULTS, "vocab_size": config.get("vocab_size", LLAMA_DEFAULTS["vocab_size"]), **text}
    llm.setdefault("model_type", "llama")
    llm["architectures"] = llm.get("architectures") or ["LlamaForCausalLM"]
    vision = _clip_config({"vision_config": config["vision_config"]}, root)
    rules = RULES["llava-hf"]
    weights = {part: part_files(files, rules, part) for part in ("llm", "vision_tower", "mm_projector")}
    semantics = {"image_aspect_ratio": "pad", "mm_vision_select_layer": layer,
                 "mm_vision_select_feature": SELECT_STRATEGIES[strategy], "conv_mode": "vicuna_v1"}
    projector = {"model_type": "v2l_projector", "mm_projector_type": "mlp2x_gelu"}
    return llm, vision, projector, semantics, root, weights, dict.fromkeys(weights, rules)

"""LLaMA-VID folders (dvlab-research/LLaMA-VID; YanweiLi/llama-vid-*) read as the VILA layout, in place, plus what
the vision side needs beyond VILA's: the attention modules (`vlm_att_*`), the Q-Former's BERT config and tokenizer.
Pure (configs, file names, headers; no torch): checkpoint.py builds the Checkpoint, part_weights.py reads the tensors.

- The released folder (llamavid/model/builder.py::load_pretrained_model): a flat LlavaLlamaAttForCausalLM config.json
  (Llama keys + mm_* + bert_type / num_query / compress_type / max_token), pickle shards at the root holding the LLM,
  `model.mm_projector.*` and `model.vlm_att_{encoder,query,ln,projector,key_projector,val_projector}*`; EVA-ViT-g
  reloaded from the LAVIS eva_vit_g.pth that `mm_vision_tower` names by a relative path (the shards' own
  `model.vision_tower.*`, if any, are ignored as upstream ignores them); bert-base-uncased from the hub (`init_bert`);
  the CLIP image processor settings from `image_processor`.
- A VILA-layout folder vila-edge wrote (quantize, convert): llm/, vision_tower/ (eva_vit_g tensors in safetensors,
  with the config built here), mm_projector/, and vlm_att/ (the attention modules, the BERT config and tokenizer);
  config.json's `llamavid` block holds the semantics.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from .arch import BERT_BASE, EVA_HEAD_DIM, QFORMER_ADDED_TOKEN
from .config_checks import RESTORE, check_llm_config, check_llm_files, check_vision_config, read_json, shown
from .errors import CheckpointError, UnsupportedError
from .llava_format import LLAVA_KEY_PREFIXES, _cached_snapshot, _clip_processor, hub_cache, part_files, weight_files
from .pickle_header import pickle_shapes
from .safetensors_header import read_header

ATT_DIR = "vlm_att"  # the attention modules' subfolder in the VILA layout
RULES = (  # (source prefix, part, VILA-layout prefix), as llava_format.RULES; "" drops the tensor
    ("model.mm_projector.", "mm_projector", "layers."),
    ("model.vlm_att_", ATT_DIR, "vlm_att_"),
    ("model.vision_tower.", "", ""),
    ("model.", "llm", "model."),
    ("lm_head.", "llm", "lm_head."),
)
LLAMAVID_KEYS = ("bert_type", "num_query", "compress_type", "max_token", "image_processor", "fusion_type",
                 "num_qformer", "position_type", "cross_att_freq")  # the flat config's keys that are not the LLM's
BERT_HUB_IDS = ("bert-base-uncased", "google-bert/bert-base-uncased")
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class LlamaVid:
    """LLaMA-VID's vision-side semantics (llamavid_arch.py) and where its attention modules and BERT live."""

    bert_type: str  # "qformer_pretrain*": the LAVIS Q-Former with vlm_att_ln
    num_query: int
    compress_type: str | None  # token_generation's content tokens: mean / mean_concat / grid:N / None (every patch)
    select_feature: str  # mm_vision_select_feature: "patch" drops the class token before token generation
    bert: dict  # the Q-Former's BERT config (bert-base-uncased's config.json)
    tokenizer_dir: Path  # vocab.txt of bert-base-uncased

    def content_tokens(self, patches: int) -> int:
        """Content tokens per frame out of `patches` patch features (token_generation)."""
        kind = self.compress_type or ""
        if "grid" in kind:  # avg_pool2d with kernel = stride = side // N over the side x side patch grid
            side = round(patches**0.5)
            return (side // max(1, side // int(kind.split("grid:")[-1]))) ** 2
        return 1 if "mean" in kind else patches

    def semantics(self) -> dict:
        return {"bert_type": self.bert_type, "num_query": self.num_query, "compress_type": self.compress_type,
                "select_feature": self.select_feature}


def is_llamavid(config: dict) -> bool:
    archs = " ".join(a for a in config.get("architectures") or [] if isinstance(a, str))
    return "LlavaLlamaAttForCausalLM" in archs or (isinstance(config.get("mm_vision_tower"), str) and "bert_type" in config)


def _spec(where: Path, semantics: dict, bert: dict, tokenizer_dir: Path) -> LlamaVid:
    bert_type = semantics.get("bert_type", "qformer")
    if not isinstance(bert_type, str) or "qformer" not in bert_type:
        raise UnsupportedError(f"{where}: bert_type {shown(bert_type)}: only the Q-Former (qformer*, the released "
                               "models' qformer_pretrain_freeze*) is supported, not the raw BERT")
    num_query, compress = semantics.get("num_query", 32), semantics.get("compress_type")
    if isinstance(num_query, bool) or not isinstance(num_query, int) or num_query < 1:
        raise CheckpointError(f"{where}: num_query is {shown(num_query)}, expected a positive integer (32); {RESTORE}")
    if compress is not None and not isinstance(compress, str):
        raise CheckpointError(f"{where}: compress_type is {shown(compress)}, expected mean, grid:N or null; {RESTORE}")
    if compress and "grid" in compress and not compress.split("grid:")[-1].isdigit():
        raise CheckpointError(f"{where}: compress_type {compress!r}: grid:N needs an integer N; {RESTORE}")
    select = semantics.get("select_feature", "patch")
    return LlamaVid(bert_type, num_query, compress, select, bert, tokenizer_dir)


# ---- the released folder ----------------------------------------------------------------------------------------


def _local(root: Path, name: str) -> list[Path]:
    named = Path(name).expanduser()
    return [named] if named.is_absolute() else [root / named, named]


def resolve_eva(root: Path, name: str, option: str | None) -> Path:
    """The eva_vit_g.pth mm_vision_tower names: the path in config.json (from the folder, or as given), else
    --vision-tower (the file, or a folder holding it)."""
    found = next((p for p in _local(root, name) if p.is_file()), None)
    if found is None and option is not None:
        given = Path(option)
        found = given / Path(name).name if given.is_dir() else given
        if not found.is_file():
            raise CheckpointError(f"--vision-tower {option}: no {Path(name).name} there; pass LAVIS's eva_vit_g.pth "
                                  "(the file, or the folder that holds it)")
    if found is None:
        raise CheckpointError(
            f"{root / 'config.json'}: mm_vision_tower {name!r} (LAVIS's EVA-ViT-g) is not at that path, nor under "
            f"{root}, and no --vision-tower PATH was given; pass --vision-tower with a local eva_vit_g.pth (LLaMA-VID's "
            "README: model_zoo/LAVIS/eva_vit_g.pth)")
    return found


def resolve_bert(root: Path, option: str | None) -> Path:
    """bert-base-uncased's folder (vocab.txt; config.json where present): --qformer-tokenizer, else the HF cache."""
    if option is not None:
        if not (Path(option) / "vocab.txt").is_file():
            raise CheckpointError(f"--qformer-tokenizer {option}: no vocab.txt there; pass a local copy of "
                                  "bert-base-uncased (vocab.txt, tokenizer_config.json, config.json)")
        return Path(option)
    for hub_id in BERT_HUB_IDS:
        snapshot = _cached_snapshot(hub_id)
        if snapshot is not None and (snapshot / "vocab.txt").is_file():
            return snapshot
    raise CheckpointError(
        f"{root}: LLaMA-VID's Q-Former tokenizes the question with bert-base-uncased, found neither through "
        f"--qformer-tokenizer PATH nor in the Hugging Face cache ({hub_cache()}/models--bert-base-uncased); pass "
        "--qformer-tokenizer with a local copy (`huggingface-cli download bert-base-uncased` where there is network)")


def bert_config(folder: Path) -> dict:
    """bert-base-uncased's config.json (BERT_BASE where the folder has none), the [DEC] token counted as init_bert's
    resize_token_embeddings does."""
    path = folder / "config.json"
    config = {**BERT_BASE, **(read_json(path, RESTORE) if path.is_file() else {})}
    config = {k: config[k] for k in BERT_BASE}
    vocab = sum(1 for _ in open(folder / "vocab.txt", encoding="utf-8"))
    config["vocab_size"] = max(config["vocab_size"], vocab) + 1  # + [DEC]
    config["added_token"] = QFORMER_ADDED_TOKEN
    return config


def processor_config(root: Path, name) -> dict:
    """The CLIP image processor `image_processor` names (its preprocessor_config.json), else the settings LLaMA-VID
    ships for it (llamavid/processor/clip-patch14-{224,336}: CLIP's mean/std, bicubic, shortest edge + centre crop)."""
    if isinstance(name, str):
        for folder in _local(root, name):
            if (folder / "preprocessor_config.json").is_file():
                return _clip_processor(read_json(folder / "preprocessor_config.json", RESTORE))
    size = 336 if "336" in str(name) else 224
    return {"do_resize": True, "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD}


def processor_size(pre: dict, root: Path) -> int:
    """The tower's input size: the processor's shortest edge (eva_vit.py: img_size = size['shortest_edge']), which
    its centre crop keeps."""
    size = pre.get("size")
    edge = size.get("shortest_edge") if isinstance(size, dict) else None
    if not isinstance(edge, int) or isinstance(edge, bool) or edge < 1:
        raise CheckpointError(f"{root / 'config.json'}: image_processor's size {shown(size)} has no shortest_edge; "
                              f"LLaMA-VID's CLIP processors say 224 or 336; {RESTORE}")
    return edge


def eva_config(shapes: dict[str, list[int]], image_size: int, where: Path) -> dict:
    """The vision config of an EVA-ViT-g state dict (eva_vit.py builds it from constants; read from the shapes
    here so that any width runs): heads of 88 channels, the position table interpolated to image_size at load."""
    patch = shapes.get("patch_embed.proj.weight")
    fc1 = shapes.get("blocks.0.mlp.fc1.weight")
    table = shapes.get("pos_embed")
    if patch is None or fc1 is None or table is None or "blocks.0.attn.qkv.weight" not in shapes:
        raise CheckpointError(f"{where}: not an EVA-ViT-g state dict (patch_embed.proj.weight, pos_embed, blocks.N.*); "
                              "pass LAVIS's eva_vit_g.pth")
    hidden = patch[0]
    if hidden % EVA_HEAD_DIM:
        raise CheckpointError(f"{where}: width {hidden} is not a multiple of EVA's {EVA_HEAD_DIM}-channel heads")
    grid = round((table[1] - 1) ** 0.5)
    if grid * grid + 1 != table[1]:
        raise CheckpointError(f"{where}: pos_embed holds {table[1]} positions, not a square grid + 1; {RESTORE}")
    layers = len({n.split(".")[1] for n in shapes if n.startswith("blocks.")})
    return {"model_type": "eva_vit_g", "architectures": ["EvaVisionTransformer"], "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": hidden // EVA_HEAD_DIM, "intermediate_size": fc1[0],
            "image_size": image_size, "patch_size": patch[2], "num_channels": 3, "hidden_act": "gelu",
            "layer_norm_eps": 1e-6, "qkv_bias": "blocks.0.attn.q_bias" in shapes, "pretrained_grid": grid}


def tower_shapes(path: Path) -> dict[str, list[int]]:
    return {k: v["shape"] for k, v in read_header(path).items()} if path.suffix == ".safetensors" else pickle_shapes(path)


def llamavid_fields(root: Path, config: dict, allow_pickle: bool = False, vision_tower: str | None = None,
                    qformer_tokenizer: str | None = None) -> dict | None:
    """The Checkpoint's fields (family aside) of a released LLaMA-VID folder, or None for any other folder."""
    if not is_llamavid(config):
        return None
    where = root / "config.json"
    if config.get("mm_use_im_start_end"):
        raise UnsupportedError(f"{where}: mm_use_im_start_end true is not supported; LLaMA-VID trained without it")
    files = weight_files(root, allow_pickle)
    eva = resolve_eva(root, config["mm_vision_tower"], vision_tower)
    if eva.suffix != ".safetensors" and not allow_pickle:
        raise CheckpointError(f"{eva}: pickle-only weights, which can run arbitrary code when loaded. Convert them to "
                              "safetensors, or pass --allow-pickle if you trust where they came from")
    preprocessor = processor_config(root, config.get("image_processor"))
    vision = eva_config(tower_shapes(eva), processor_size(preprocessor, root), eva)
    llm = {k: v for k, v in config.items()
           if not k.startswith(LLAVA_KEY_PREFIXES) and k not in LLAMAVID_KEYS and k != "architectures"}
    llm.update(model_type="llama", architectures=["LlamaForCausalLM"])
    if isinstance(config.get("max_token"), int):  # the context LLaMA-VID trained to (rope linear x16 for long video)
        llm["tokenizer_model_max_length"] = config["max_token"]
    check_llm_config(llm, where)
    check_vision_config(vision, eva)
    check_llm_files(root)
    bert_dir = resolve_bert(root, qformer_tokenizer)
    semantics = {**{k: config[k] for k in ("bert_type", "num_query", "compress_type") if k in config},
                 "select_feature": config.get("mm_vision_select_feature", "patch")}
    spec = _spec(where, semantics, bert_config(bert_dir), bert_dir)
    projector = {"model_type": "v2l_projector", "mm_projector_type": config.get("mm_projector_type", "linear")}
    weights = {"llm": part_files(files, RULES, "llm"), "vision_tower": [eva],
               "mm_projector": part_files(files, RULES, "mm_projector"), ATT_DIR: part_files(files, RULES, ATT_DIR)}
    for part, found in weights.items():
        if not found:
            raise CheckpointError(f"{root}: no tensor of {part} among the weights; a shard is missing or the weights "
                                  "come from another model; copy them again")
    top = {"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "llm_cfg": llm,
           "vision_tower_cfg": vision, "mm_projector_cfg": projector, "hidden_size": llm["hidden_size"],
           "mm_hidden_size": vision["hidden_size"], "mm_use_im_start_end": False, "image_aspect_ratio": None,
           "mm_vision_select_layer": -1, "mm_vision_select_feature": "cls_patch", "conv_mode": "imgsp_v1",
           "llamavid": spec.semantics()}
    return dict(root=root, config=top, llm_dir=root, vision_dir=eva.parent, projector_dir=root, llm_config=llm,
                vision_config=vision, projector_config=projector, preprocessor=preprocessor, weights=weights,
                renames={"llm": RULES, "mm_projector": RULES, ATT_DIR: RULES}, layout="llama-vid", llamavid=spec)


# ---- a VILA-layout folder with vlm_att/ ------------------------------------------------------------------------------


def vila_llamavid(root: Path, config: dict, allow_pickle: bool) -> dict:
    """The fields a VILA-layout LLaMA-VID adds (config.json `llamavid`, vlm_att/), {} for any other folder."""
    semantics = config.get("llamavid")
    if semantics is None:
        return {}
    folder = root / ATT_DIR
    if not isinstance(semantics, dict):
        raise CheckpointError(f"{root / 'config.json'}: llamavid holds {shown(semantics)}, not an object; {RESTORE}")
    if not (folder / "vocab.txt").is_file() or not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: LLaMA-VID's attention modules need vlm_att/ with config.json and vocab.txt; "
                              "copy the whole checkpoint folder")
    bert = read_json(folder / "config.json", RESTORE)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no weights (*.safetensors) found; copy them from the source checkpoint")
    return {"llamavid": _spec(root / "config.json", semantics, bert, folder), "extra_weights": {ATT_DIR: files}}


def write_att_folder(spec: LlamaVid, folder: Path) -> None:
    """vlm_att/'s config.json (the BERT config) and the tokenizer files, beside its tensors."""
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(spec.bert, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (spec.tokenizer_dir / name).is_file():
            (folder / name).write_bytes((spec.tokenizer_dir / name).read_bytes())

"""A checkpoint read in place (LLaVA-1.5, either layout: llava_format.py) written in the VILA layout, safetensors
throughout: `vila-edge convert LLAVA_FOLDER -o OUT` writes all of it, `quantize` its vision_tower/ and mm_projector/
beside the AWQ llm/. Safetensors sources are copied byte for byte from their headers under the new names (no torch,
as convert.py copies HF-format NVILA); pickle sources (the original's shards) are read with torch.load
(weights_only=True), which load_checkpoint admitted only with allow_pickle, and saved as safetensors."""

import json
import shutil
from pathlib import Path

from ..atomic import atomic_dir
from ..checkpoint import SUBFOLDERS, Checkpoint, load_checkpoint
from ..config_checks import read_json
from ..errors import UsageError, require_extra
from ..llava_format import llava_layout, rename
from .convert import TOKENIZER_FILES, ConvertReport, copy_weights, read_shard

SHARD_BYTES = 5 * 2**30  # pickle sources: the largest safetensors shard written


def is_llava_folder(path) -> bool:
    """True where path/config.json is one of LLaVA-1.5's (the original's or llava-hf's)."""
    config = Path(path) / "config.json"
    return config.is_file() and llava_layout(read_json(config, "copy config.json from the source")) is not None


def write_vila_parts(ckpt: Checkpoint, tmp: Path, parts=SUBFOLDERS, progress: bool = False) -> dict[str, int]:
    """ckpt's `parts` as VILA-layout subfolders of tmp (config.json from its *_cfg, llm/'s tokenizer files,
    vision_tower/'s preprocessor_config.json, the tensors under their VILA-layout names); {part: tensors}."""
    counts = {}
    for part in parts:
        folder = tmp / part
        folder.mkdir()
        config = {k: v for k, v in ckpt.config[f"{part}_cfg"].items() if k != "_name_or_path"}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if part == "llm":
            for name in TOKENIZER_FILES:
                if (ckpt.llm_dir / name).is_file():
                    shutil.copyfile(ckpt.llm_dir / name, folder / name)
        if part == "vision_tower":
            (folder / "preprocessor_config.json").write_text(json.dumps(ckpt.preprocessor, indent=2) + "\n")
        counts[part] = write_part_tensors(ckpt, part, tmp, progress)
    return counts


def write_part_tensors(ckpt: Checkpoint, part: str, tmp: Path, progress: bool) -> int:
    """ckpt's `part` tensors under their VILA-layout names into tmp/part, safetensors; returns how many."""
    rules = ckpt.renames.get(part)
    if not ckpt.is_pickle(part):
        shards = [read_shard(f) for f in ckpt.weights[part]]
        names = {new: old for s in shards for old in s.header if (new := rename(old, rules, part) if rules else old)}
        copy_weights(tmp, {part: names}, shards, progress)
        return len(names)
    require_extra("quantize", f"{ckpt.weights[part][0]}: reading pickle weights", "convert on a machine with torch")
    from ..awq_checkpoint import write_safetensors
    from ..part_weights import read_part

    state = {k: v.contiguous() for k, v in sorted(read_part(ckpt, part).items())}
    write_safetensors(tmp / part, state, SHARD_BYTES)
    return len(state)


def convert_llava(src, out, overwrite: bool = False, progress: bool = True, allow_pickle: bool = False,
                  vision_tower: str | None = None, hf_processor: bool = False,
                  qformer_tokenizer: str | None = None) -> ConvertReport:
    """The VILA layout of a LLaVA-1.5 folder in OUT, written whole or not at all, loaded before it is kept."""
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise UsageError(f"{out}: inside the source folder {src}; choose an output folder elsewhere")
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: already exists; remove it, pass --overwrite, or choose another output folder")
    ckpt = load_checkpoint(src, allow_pickle, vision_tower, hf_processor, qformer_tokenizer=qformer_tokenizer)
    semantics = ckpt.config["vila_edge_convert"]["semantics"]
    report = ConvertReport(src, out, ckpt.layout, semantics)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(ckpt.config, indent=2) + "\n")
        report.tensors = write_vila_parts(ckpt, tmp, SUBFOLDERS, progress)
        report.bytes = sum(f.stat().st_size for f in tmp.rglob("*.safetensors"))
        load_checkpoint(tmp)  # the result loads, or nothing is written
    return report

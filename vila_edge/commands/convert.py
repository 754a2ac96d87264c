"""`vila-edge convert HF_FOLDER -o OUT`: an HF-format NVILA conversion (NVILA-8B-hf, NVILA-Lite-2B-hf-preview) back
to the VILA layout the loader reads (config.json + llm/ vision_tower/ mm_projector/).

The split is read from the safetensors headers (hf_format.split_names); each tensor's bytes are then copied as they
are, one source shard at a time, into one output shard per part and source shard: no tensor is decoded (any dtype,
bf16 included), nothing is held in memory but a copy buffer, and neither torch nor transformers is imported. The
result is written atomically and loaded (load_checkpoint) before it takes OUT's name."""

import json
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_dir
from ..checkpoint import load_checkpoint
from ..config_checks import read_json
from ..errors import CheckpointError, UsageError
from ..formats import CHECKPOINT_PARTS
from ..hf_format import check_hf_config, split_names, vila_configs
from ..safetensors_header import read_header_and_metadata

# Tokenizer and generation files an HF-format folder keeps at its root; they go to llm/ (those present).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "generation_config.json")
CHUNK = 64 * 2**20


@dataclass
class ConvertReport:
    src: Path
    out: Path
    model_type: str
    defaults: dict  # field -> the SGLang / VILA default written because the HF config lacks it
    tensors: dict[str, int] = field(default_factory=dict)  # part -> tensors written
    bytes: int = 0


@dataclass
class _Shard:
    """One source file: its tensors' entries and where its data begins."""

    path: Path
    header: dict
    metadata: dict
    data_start: int


def convert_hf(src: str | Path, out: str | Path, overwrite: bool = False, progress: bool = True) -> ConvertReport:
    """Check everything that can be checked before writing, then write OUT whole or not at all."""
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: no config.json; pass the HF-format NVILA folder (NVILA-8B-hf, ...)")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise UsageError(f"{out}: inside the source folder {src}; choose an output folder elsewhere")
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: already exists; remove it, pass --overwrite, or choose another output folder")
    config = read_json(src / "config.json", "copy config.json from the HF-format release")
    check_hf_config(config, src / "config.json")
    _check_files(src)
    shards = _read_shards(src)
    parts = split_names({name: s.path for s in shards for name in s.header}, src)
    top, defaults = vila_configs(config)
    top["vila_edge_convert"] = {"from_model_type": config["model_type"], "defaults": defaults}
    report = ConvertReport(src, out, config["model_type"], defaults, {p: len(n) for p, n in parts.items()})
    with atomic_dir(out, overwrite=overwrite) as tmp:
        _write_configs(src, tmp, top)
        report.bytes = copy_weights(tmp, parts, shards, progress)
        load_checkpoint(tmp)  # the result loads, or nothing is written
    return report


def _check_files(src: Path) -> None:
    if not (src / "tokenizer_config.json").is_file() or not any((src / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise CheckpointError(f"{src}: tokenizer files missing (need tokenizer_config.json and tokenizer.json or "
                              "tokenizer.model beside config.json); copy them from the HF-format release")
    if not (src / "preprocessor_config.json").is_file():
        raise CheckpointError(f"{src}: preprocessor_config.json missing; copy it from the HF-format release")


def _read_shards(src: Path) -> list[_Shard]:
    """The source's safetensors files (those its index names, else every *.safetensors), headers read."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "copy model.safetensors.index.json from the release").get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map object; copy it again from the release")
        files = [src / name for name in sorted(set(map(str, weight_map.values())))]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{missing[0]}: named in {index.name} but missing; copy it from the release")
    else:
        files = sorted(src.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{src}: no *.safetensors weights; copy them from the HF-format release")
    return [read_shard(f) for f in files]


def read_shard(f: Path) -> _Shard:
    """One safetensors file's header, metadata and where its data begins."""
    header, metadata = read_header_and_metadata(f)
    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
    return _Shard(f, header, metadata, 8 + n)


def _write_configs(src: Path, tmp: Path, top: dict) -> None:
    (tmp / "config.json").write_text(json.dumps(top, indent=2) + "\n")
    for part in CHECKPOINT_PARTS:
        (tmp / part).mkdir()
        sub = {k: v for k, v in top[f"{part}_cfg"].items() if k != "_name_or_path"}
        (tmp / part / "config.json").write_text(json.dumps(sub, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / "llm" / name)
    shutil.copyfile(src / "preprocessor_config.json", tmp / "vision_tower" / "preprocessor_config.json")


def copy_weights(tmp: Path, parts: dict[str, dict[str, str]], shards: list[_Shard], progress: bool) -> int:
    """Each part's tensors, one output shard per source shard holding them (an index where a part has several)."""
    from tqdm import tqdm

    plan = {part: [(s, {new: old for new, old in names.items() if old in s.header}) for s in shards]
            for part, names in parts.items()}
    plan = {part: [(s, names) for s, names in groups if names] for part, groups in plan.items()}
    total = sum(_nbytes(s.header[old]) for groups in plan.values() for s, names in groups for old in names.values())
    with tqdm(total=total, desc="copying weights", unit="B", unit_scale=True, file=sys.stderr, dynamic_ncols=True,
              disable=not progress, leave=False) as bar:
        for part, groups in plan.items():
            files = ["model.safetensors"] if len(groups) == 1 else [
                f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
            for (shard, names), name in zip(groups, files):
                _write_shard(tmp / part / name, shard, names, bar)
            if len(groups) > 1:
                weight_map = {new: name for (_, names), name in zip(groups, files) for new in names}
                size = sum(_nbytes(s.header[old]) for s, names in groups for old in names.values())
                index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
                (tmp / part / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


def _nbytes(entry: dict) -> int:
    begin, end = entry["data_offsets"]
    return end - begin


def _write_shard(dst: Path, shard: _Shard, names: dict[str, str], bar) -> None:
    """A safetensors file of `names` (new -> old), its tensors' bytes copied from the source in file order."""
    entries = sorted(names.items(), key=lambda kv: shard.header[kv[1]]["data_offsets"][0])
    header, offset = {"__metadata__": shard.metadata or {"format": "pt"}}, 0
    for new, old in entries:
        entry = shard.header[old]
        header[new] = {"dtype": entry["dtype"], "shape": entry["shape"], "data_offsets": [offset, offset + _nbytes(entry)]}
        offset += _nbytes(entry)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(shard.path, "rb") as fin, open(dst, "wb") as fout:
        fout.write(struct.pack("<Q", len(blob)) + blob)
        for _, old in entries:
            begin, end = shard.header[old]["data_offsets"]
            fin.seek(shard.data_start + begin)
            left = end - begin
            while left:
                chunk = fin.read(min(CHUNK, left))
                if not chunk:
                    raise CheckpointError(f"{shard.path}: ends inside tensor {old}; copy it again from the release")
                fout.write(chunk)
                left -= len(chunk)
                bar.update(len(chunk))

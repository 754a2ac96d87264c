"""The AWQ checkpoint `vila-edge quantize` writes, and the readers that take it back (below the model).

- `llm/`: AutoAWQ GEMM layout (`<linear>.qweight/.qzeros/.scales`), everything else fp16, safetensors
  shards, and the `quantization_config` transformers and vLLM read;
- `awq_results.safetensors`: the searched scales and clip ranges, so another layout can be
  packed from the fp checkpoint without searching again (`quant.awq.apply_awq_results`).
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .formats import AWQ_RESULTS_FORMAT
from .int4 import dequantize_groups, unpack_awq_gemm

GEMM_SUFFIXES = ("qweight", "qzeros", "scales")
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")


def quantization_config(group_size: int, w_bit: int = 4) -> dict:
    return {
        "quant_method": "awq",
        "bits": w_bit,
        "group_size": group_size,
        "zero_point": True,
        "version": "gemm",
        # lm_head stays fp16; the VLM's tower and projector are named for loaders that see the whole model
        "modules_to_not_convert": ["lm_head", "vision_tower", "mm_projector"],
    }


def is_awq(llm_config: dict) -> bool:
    return (llm_config.get("quantization_config") or {}).get("quant_method") == "awq"


# ---- writing -----------------------------------------------------------------------------------


class ShardWriter:
    """safetensors shards written as tensors arrive, each at most `max_bytes` (a larger tensor alone), named as HF
    names them once closed: model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json.
    Only one shard is held in memory at a time."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.current, self.size, self.done = {}, 0, []  # done: (temporary path, tensor names, bytes)

    def add(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.current and self.size + nbytes > self.max_bytes:
            self._flush()
        self.current[name] = t.contiguous()
        self.size += nbytes

    def _flush(self) -> None:
        path = self.folder / f".shard-{len(self.done)}.safetensors"
        save_file(self.current, path, metadata={"format": "pt"})
        self.done.append((path, list(self.current), self.size))
        self.current, self.size = {}, 0

    def close(self) -> None:
        if self.current or not self.done:
            self._flush()
        if len(self.done) == 1:
            self.done[0][0].rename(self.folder / "model.safetensors")
            return
        weight_map = {}
        for i, (path, names, _) in enumerate(self.done, 1):
            name = f"model-{i:05d}-of-{len(self.done):05d}.safetensors"
            path.rename(self.folder / name)
            weight_map.update(dict.fromkeys(names, name))
        index = {"metadata": {"total_size": sum(size for *_, size in self.done)}, "weight_map": weight_map}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_safetensors(folder: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    """tensors, in their order, into shards of at most max_shard_bytes (ShardWriter)."""
    writer = ShardWriter(folder, max_shard_bytes)
    for name, t in tensors.items():
        writer.add(name, t)
    writer.close()


def write_awq_config(dst: Path, src: Path, group_size: int, config: dict | None = None) -> None:
    """llm/ of a quantized checkpoint without its weights: src's tokenizer and configs (`config`, where given, for
    src/config.json: a LLaVA-1.5 folder's LLM config is not a file of its own), the quantization_config."""
    dst.mkdir(parents=True)
    for f in src.iterdir():  # tokenizer, generation config, chat template, ...
        if f.is_file() and f.name != "config.json" and not any(f.match(p) for p in WEIGHT_FILES):
            shutil.copy2(f, dst / f.name)
    config = dict(config) if config is not None else json.loads((src / "config.json").read_text())
    config["quantization_config"] = quantization_config(group_size)
    config["torch_dtype"] = config["dtype"] = "float16"
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_awq_llm(dst: Path, src: Path, llm, packed: dict[str, dict[str, torch.Tensor]], group_size: int,
                  max_shard_bytes: int = 5 * 2**30, config: dict | None = None) -> None:
    """llm/ of the quantized checkpoint: src's tokenizer and configs (see write_awq_config), packed linears, the rest
    fp16."""
    write_awq_config(dst, src, group_size, config)
    tensors = {}
    for name, t in llm.state_dict().items():
        if name == "lm_head.weight" and llm.config.tie_word_embeddings:
            continue  # the same tensor as the embeddings; HF re-ties it on load
        if name.endswith(".weight") and name[: -len(".weight")] in packed:
            continue
        tensors[name] = t.detach().to(torch.float16).contiguous()
    for linear, gemm in packed.items():
        tensors.update({f"{linear}.{k}": v.contiguous() for k, v in gemm.items()})
    write_safetensors(dst, dict(sorted(tensors.items())), max_shard_bytes)


# ---- reading -----------------------------------------------------------------------------------


def dequantize_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """AutoAWQ GEMM tensors -> plain `<linear>.weight` [N, K]; other tensors cast to dtype."""
    out = {}
    for name, t in state.items():
        base, _, suffix = name.rpartition(".")
        if suffix == "qweight":
            q, scales, zeros = unpack_awq_gemm(t, state[f"{base}.qzeros"], state[f"{base}.scales"])
            out[f"{base}.weight"] = dequantize_groups(q, scales, zeros).to(dtype)
        elif suffix not in ("qzeros", "scales") or f"{base}.qweight" not in state:
            out[name] = t.to(dtype)
    return out


def load_awq_llm(llm_dir: Path, dtype: torch.dtype, files: list[Path]):
    """An HF *ForCausalLM holding the dequantised weights of an AWQ GEMM llm/ (no AWQ kernels needed)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(llm_dir)
    del config.quantization_config  # build the plain model; the weights are dequantised here instead
    state = {}
    for f in files:
        state.update(load_file(f))
    state = dequantize_state(state, dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise CheckpointError(
            f"{llm_dir}: the AWQ weights do not fit the config "
            f"(missing {', '.join(missing[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'})"
        )
    model.tie_weights()
    return model.eval()


# ---- awq_results.safetensors ------------------------------------------------------------------------


def save_awq_results(path: Path, result, settings) -> None:
    tensors = {f"scale:{prev}": s.float().contiguous() for prev, (_, s) in result.scales.items()}
    tensors.update({f"clip:{linear}": m.float().contiguous() for linear, m in result.clips.items()})
    meta = {
        "format": AWQ_RESULTS_FORMAT,
        "w_bit": str(settings.w_bit),
        "group_size": str(settings.group_size),
        "scaled_linears": json.dumps({prev: linears for prev, (linears, _) in result.scales.items()}),
    }
    save_file(tensors, path, metadata=meta)


def load_awq_results(path: Path) -> tuple[dict, dict, dict]:
    """-> (scales {prev: (linears, s)}, clips {linear: max_val}, metadata)."""
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != AWQ_RESULTS_FORMAT:
            raise CheckpointError(f"{path}: not a vila_edge AWQ results file (format {meta.get('format')!r})")
        linears = json.loads(meta["scaled_linears"])
        scales, clips = {}, {}
        for key in f.keys():
            kind, _, name = key.partition(":")
            if kind == "scale":
                scales[name] = (linears[name], f.get_tensor(key))
            else:
                clips[name] = f.get_tensor(key)
    return scales, clips, meta

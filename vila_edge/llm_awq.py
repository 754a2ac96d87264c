"""llm-awq's real-quant dumps (TinyChat's `*-w4-g128-awq-v2.pt`, what the VILA1.5-*-AWQ repos ship in llm/), found,
checked against llm/config.json and repacked losslessly into the AutoAWQ GEMM layout (int4.py) every command runs.

A dump is `torch.save(model.state_dict())` of the HF *ForCausalLM after llm-awq's `real_quantize_model_weight`
(awq/quantize/quantizer.py): every nn.Linear inside model.layers.N is a `WQLinear` (awq/quantize/qmodule.py) holding
    qweight       int16 [N/4, K]   pack_intweight(q, interleave=4, kstride=64), q = round((ŵ + z·s) / s) in 0..15
    scales        [R, N]           s transposed, in the model's dtype; R = K/G rounded up to 8 groups (16 at g64, 32 at
                                   g32: calculate_zeros_width × 8), the padding rows zero
    scaled_zeros  [R, N]           -s·z, the same padding (no -8 shift: the kernel computes w = q·s + scaled_zeros)
    bias          [N]              where the Linear had one (Qwen2's q/k/v)
and every other tensor (embed_tokens, the norms, lm_head) is plain, in the model's dtype (fp16). "v2" names this
packing; v1 (int32 qweight [N, K/8] with qzeros) is what tinychat/offline-weight-repacker.py converts from.
Group size and bits are in the file name only (formats.LLM_AWQ_DUMP). Torch is imported only to read and repack.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arch import get_llm
from .errors import CheckpointError, UnsupportedError
from .formats import LLM_AWQ_DUMP

INTERLEAVE, KSTRIDE = 4, 64  # pack_intweight's: 4 output rows share each int16 word, in strides of 64 along K
MAX_Q = 15
SKIPPED = re.compile(r"\.rotary_emb\.inv_freq$")  # a buffer transformers < 4.31 saved; recomputed from the config
AGAIN = "copy the dump and llm/config.json again from the same -AWQ repo"


def is_dump(path: Path) -> bool:
    return path.suffix == ".pt" and re.search(LLM_AWQ_DUMP, path.name) is not None


def llm_awq_weights(folder: Path, allow_pickle: bool, accept: bool) -> Path | None:
    """The llm-awq dump of a VILA1.5-*-AWQ llm/ (beside an index whose shards are absent), for a command that imports
    it (`accept`, quantize) with pickles allowed; None where the folder holds none. Refusals name the fix."""
    dumps = sorted(p for p in folder.glob("*.pt") if is_dump(p))
    if not dumps:
        return None
    if len(dumps) > 1:
        raise CheckpointError(f"{folder}: several llm-awq dumps ({', '.join(p.name for p in dumps)}); keep one")
    if not accept:
        raise UnsupportedError(
            f"{dumps[0]}: llm-awq's real-quant int4 weights (a VILA1.5-*-AWQ checkpoint), which commands do not run as "
            f"they are; import them once with `vila-edge quantize {folder.parent} -o OUT --allow-pickle` (repacked, "
            "no AWQ search) and use OUT"
        )
    if not allow_pickle:
        raise CheckpointError(
            f"{dumps[0]}: llm-awq's int4 weights are a pickle file, which can run code when loaded; pass "
            "--allow-pickle if you trust where it came from"
        )
    return dumps[0]


# ---- what llm/config.json says the dump holds -------------------------------------------------------


def zero_rows(k: int, group_size: int) -> int:
    """Rows of a WQLinear's scales and scaled_zeros: K/G rounded up to a multiple of 8, 16 (g64) or 32 (g32)."""
    multiple = {32: 32, 64: 16}.get(group_size, 8)
    return -(-(k // group_size) // multiple) * multiple


def linear_widths(c: dict) -> dict[str, tuple[int, int]]:
    """(out N, in K) of each linear of one decoder layer (Llama / Qwen2 names), from llm/config.json."""
    hidden, inter, heads = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    kv, head_dim = c.get("num_key_value_heads") or heads, c.get("head_dim") or hidden // heads
    return {"self_attn.q_proj": (heads * head_dim, hidden), "self_attn.k_proj": (kv * head_dim, hidden),
            "self_attn.v_proj": (kv * head_dim, hidden), "self_attn.o_proj": (hidden, heads * head_dim),
            "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}


@dataclass(frozen=True)
class DumpPlan:
    path: Path
    group_size: int
    linears: dict[str, tuple[int, int]]  # model.layers.i.<linear> -> (N, K)
    tensors: dict[str, tuple[tuple[int, ...], str]]  # every tensor the dump must hold -> (shape, "int16" | "float")
    tied: bool  # tie_word_embeddings: lm_head.weight may be absent, and is not written
    sizes: str  # the config's sizes, for messages


def plan_dump(path: Path, c: dict) -> DumpPlan:
    """Everything llm/config.json and the dump's name say about the dump, refused where llm-awq could not write it."""
    m = re.search(LLM_AWQ_DUMP, path.name)
    bits, group = int(m["bits"]), int(m["group"])
    if bits != 4:
        raise UnsupportedError(f"{path}: a {bits}-bit llm-awq dump; only 4-bit weights are supported")
    if group < 128 and group not in (32, 64):
        raise UnsupportedError(f"{path}: group size {group}; llm-awq packs groups of 32, 64 or 128 and up")
    arch = get_llm(c.get("model_type"), str(path.parent / "config.json"))
    widths, hidden, vocab = linear_widths(c), c["hidden_size"], c["vocab_size"]
    tensors = {"model.embed_tokens.weight": ((vocab, hidden), "float"), "model.norm.weight": ((hidden,), "float"),
               "lm_head.weight": ((vocab, hidden), "float")}
    linears = {}
    for i in range(c["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"{layer}.{norm}.weight"] = ((hidden,), "float")
        for name, (n, k) in widths.items():
            if k % group or k % KSTRIDE or n % 8:
                raise CheckpointError(f"{path}: {layer}.{name} is {n}×{k} by llm/config.json, which llm-awq cannot "
                                      f"pack at g{group} (in_features a multiple of {max(group, KSTRIDE)}, out of 8); "
                                      f"{AGAIN}")
            linears[f"{layer}.{name}"] = (n, k)
            rows = zero_rows(k, group)
            tensors |= {f"{layer}.{name}.qweight": ((n // INTERLEAVE, k), "int16"),
                        f"{layer}.{name}.scales": ((rows, n), "float"),
                        f"{layer}.{name}.scaled_zeros": ((rows, n), "float")}
            if arch.qkv_bias and name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                tensors[f"{layer}.{name}.bias"] = ((n,), "float")
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    sizes = (f"{c['num_hidden_layers']} layers, hidden {hidden}, intermediate {c['intermediate_size']}, "
             f"{heads} heads / {kv} kv heads of {widths['self_attn.q_proj'][0] // heads}, vocab {vocab}, g{group}")
    return DumpPlan(path, group, linears, tensors, bool(c.get("tie_word_embeddings")), sizes)


def check_dump(state: dict, plan: DumpPlan) -> None:
    """Every tensor the plan names, at its shape and kind, nothing else, and zeros that repack exactly: one line
    naming the first that is not."""
    if any(name.endswith(".qzeros") for name in state):
        raise UnsupportedError(f"{plan.path}: an llm-awq v1 dump (int32 qweight with qzeros); repack it to v2 with "
                               "llm-awq's tinychat/offline-weight-repacker.py, then import the *-v2.pt")
    mismatch = f"from llm/config.json ({plan.sizes}); the dump and the config come from different models, or {AGAIN}"
    for name, (shape, kind) in plan.tensors.items():
        t = state.get(name)
        if t is None:
            if name == "lm_head.weight" and plan.tied:
                continue
            raise CheckpointError(f"{plan.path}: no {name}, which the dump holds for an LLM {mismatch}")
        ok = str(t.dtype) == "torch.int16" if kind == "int16" else t.dtype.is_floating_point
        if tuple(t.shape) != shape or not ok:
            raise CheckpointError(f"{plan.path}: {name} is {str(t.dtype).removeprefix('torch.')} {list(t.shape)}, "
                                  f"where {kind} {list(shape)} follows {mismatch}")
    extra = sorted(n for n in state if n not in plan.tensors and not SKIPPED.search(n))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(f"{plan.path}: {extra[0]}{more} is no tensor of an llm-awq dump {mismatch}")
    for base, (_, k) in plan.linears.items():  # the values too, before anything is written (scales only: small)
        where = f"{plan.path}: {base}"
        group_zeros(state[f"{base}.scales"], state[f"{base}.scaled_zeros"], k // plan.group_size, where)


# ---- reading and repacking ----------------------------------------------------------------------------


def read_dump(path: Path) -> dict:
    """The dump's state dict (weights_only: tensors and containers, nothing that runs), memory-mapped where possible."""
    import pickle

    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path}: holds more than tensors ({first}); not an llm-awq dump") from None
    except (OSError, EOFError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable ({str(e).splitlines()[0]}); {AGAIN}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors, so not an llm-awq dump; {AGAIN}")
    return state


def unpack_qweight(packed: np.ndarray) -> np.ndarray:
    """int16 [N/4, K] -> q uint8 [N, K]: pack_intweight(interleave=4, kstride=64) undone, step by step in reverse."""
    rows, k = packed.shape
    words = packed.view(np.uint16).reshape(rows, k // KSTRIDE, KSTRIDE)
    nibbles = (words[..., None] >> np.arange(0, 16, 4, dtype=np.uint16)) & 0xF  # [N/4, K/64, 64, 4]
    # each stride's 64 words × 4 nibbles are its 4 rows × 64 values, read row by row
    q = nibbles.reshape(rows, k // KSTRIDE, INTERLEAVE, KSTRIDE).transpose(0, 2, 1, 3).reshape(-1, k)
    q = q.reshape(-1, k // 32, 4, 2, 4).transpose(0, 1, 2, 4, 3)  # each 8 was [0, 2, 4, 6, 1, 3, 5, 7]
    q = q.reshape(-1, k // 32, 4, 4, 2).transpose(0, 1, 3, 2, 4)  # each 32 was [0, 1, 8, 9, 16, 17, 24, 25, ...]
    return np.ascontiguousarray(q.reshape(-1, k), dtype=np.uint8)


def group_zeros(scales, scaled_zeros, groups: int, where: str):
    """One WQLinear's (s float32 [G, N], zeros float32 [G, N]), refused unless the zeros rebuild scaled_zeros exactly as
    WQLinear.from_linear computed it (-(s · z) in fp32, cast to the dump's dtype), fp16 holds the scales, and the
    padding rows are zero: then the repacking loses nothing."""
    import torch

    s = scales[:groups].float()
    zeros = torch.round(-scaled_zeros[:groups].float() / s)
    exact = (bool(torch.isfinite(zeros).all()) and bool(((zeros >= 0) & (zeros <= MAX_Q)).all())
             and torch.equal((-(s * zeros)).to(scaled_zeros.dtype), scaled_zeros[:groups])
             and torch.equal(s.half().float(), s) and not scales[groups:].any() and not scaled_zeros[groups:].any())
    if not exact:
        raise CheckpointError(f"{where}: scales and scaled_zeros are not what llm-awq's WQLinear writes (-scale·zero "
                              f"with zero in 0..15, scales fp16 can hold, padding rows zero); {AGAIN}")
    return s, zeros


def repack_linear(qweight, scales, scaled_zeros, group_size: int, where: str) -> dict:
    """One WQLinear's buffers -> AutoAWQ GEMM {qweight, qzeros, scales}: the same int4 values, zeros and fp16 scales."""
    import torch

    from .int4 import pack_awq_gemm

    s, zeros = group_zeros(scales, scaled_zeros, qweight.shape[1] // group_size, where)
    q = torch.from_numpy(unpack_qweight(qweight.numpy()))
    return pack_awq_gemm(q, s.t(), zeros.t().to(torch.uint8))


def write_dump_llm(dst: Path, src: Path, state: dict, plan: DumpPlan, max_shard_bytes: int, progress: bool) -> int:
    """llm/ in the AutoAWQ GEMM layout: src's tokenizer and config (quantization_config added), each WQLinear
    repacked, every other tensor fp16 (a tied lm_head left out, as HF re-ties it); returns the linears repacked."""
    import sys

    import torch
    from tqdm import tqdm

    from .awq_checkpoint import ShardWriter, write_awq_config

    write_awq_config(dst, src, plan.group_size)
    writer = ShardWriter(dst, max_shard_bytes)
    names = [n for n in sorted(plan.tensors) if n in state and not (n == "lm_head.weight" and plan.tied)]
    for name in tqdm(names, desc="repacking", unit="tensor", file=sys.stderr, disable=not progress, leave=False):
        base, _, suffix = name.rpartition(".")
        if base in plan.linears and suffix == "qweight":
            gemm = repack_linear(state[name], state[f"{base}.scales"], state[f"{base}.scaled_zeros"], plan.group_size,
                                 f"{plan.path}: {base}")
            for key, t in gemm.items():
                writer.add(f"{base}.{key}", t)
        elif base not in plan.linears or suffix == "bias":
            writer.add(name, state[name].to(torch.float16))
    writer.close()
    return len(plan.linears)

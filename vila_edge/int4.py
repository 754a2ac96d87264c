"""Asymmetric int4 group quantization and the AutoAWQ GEMM packing, as pure function pairs.

A Linear weight is W [N, K] (out, in); groups of `group_size` run along K.
Quantizer (llm-awq pseudo_quantize_tensor), per group:
    scale = max(max - min, 1e-5) / 15,  zero = clamp(-round(min / scale), 0, 15)
    q = clamp(round(w / scale) + zero, 0, 15),  ŵ = (q - zero) · scale
AutoAWQ GEMM layout (the interchange format transformers and vLLM load):
    qweight int32 [K, N/8]: nibble i of word c holds column 8c + AWQ_ORDER[i]
    qzeros  int32 [K/G, N/8], same packing, raw zeros 0..15
    scales  fp16  [K/G, N]
"""

import torch

from .errors import UsageError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
MAX_Q = 15


def _check_groups(k: int, group_size: int) -> None:
    if group_size <= 0 or k % group_size:  # (a safetensors checkpoint is refused earlier, from its headers, by name)
        raise UsageError(f"--group-size {group_size} does not divide in_features {k}; pick a group size that divides "
                         "every layer's (32 and 64 usually do)")


def quantize_groups(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W [N, K] -> (q uint8 [N, K] in 0..15, scales float32 [N, K/G], zeros uint8 [N, K/G])."""
    n, k = w.shape
    _check_groups(k, group_size)
    g = w.float().reshape(n, k // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scales = (hi - lo).clamp(min=1e-5) / MAX_Q
    zeros = (-torch.round(lo / scales)).clamp(0, MAX_Q)
    q = (torch.round(g / scales[..., None]) + zeros[..., None]).clamp(0, MAX_Q)
    return q.reshape(n, k).to(torch.uint8), scales, zeros.to(torch.uint8)


def dequantize_groups(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """(q [N, K], scales [N, K/G], zeros [N, K/G]) -> ŵ float32 [N, K]."""
    n, k = q.shape
    groups = scales.shape[1]
    g = q.float().reshape(n, groups, k // groups) - zeros.float()[..., None]
    return (g * scales.float()[..., None]).reshape(n, k)


def pseudo_quantize(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """W -> ŵ in W's dtype: what the AWQ search scores its candidates with."""
    return dequantize_groups(*quantize_groups(w, group_size)).to(w.dtype)


def _pack_columns(x: torch.Tensor) -> torch.Tensor:
    """uint8 [R, N] of nibbles -> int32 [R, N/8] in AWQ_ORDER."""
    r, n = x.shape
    if n % 8:
        raise ValueError(f"out_features {n} is not a multiple of 8")
    cols = x.to(torch.int64).reshape(r, n // 8, 8)[..., list(AWQ_ORDER)]
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    words = (cols << shifts).sum(dim=-1)
    return (words - (words >= 2**31).to(torch.int64) * 2**32).to(torch.int32)  # two's complement


def _unpack_columns(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, N/8] -> uint8 [R, N]."""
    r, c = words.shape
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    nibbles = (words.to(torch.int64)[..., None] >> shifts) & 0xF  # [R, C, 8] in AWQ_ORDER
    out = torch.empty_like(nibbles)
    out[..., list(AWQ_ORDER)] = nibbles
    return out.reshape(r, c * 8).to(torch.uint8)


def pack_awq_gemm(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> dict[str, torch.Tensor]:
    """quantize_groups' output -> {"qweight", "qzeros", "scales"} in AutoAWQ GEMM layout."""
    return {
        "qweight": _pack_columns(q.t()),
        "qzeros": _pack_columns(zeros.t()),
        "scales": scales.t().to(torch.float16).contiguous(),
    }


def unpack_awq_gemm(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor):
    """AutoAWQ GEMM tensors -> (q uint8 [N, K], scales float32 [N, K/G], zeros uint8 [N, K/G])."""
    return _unpack_columns(qweight).t().contiguous(), scales.float().t().contiguous(), _unpack_columns(qzeros).t().contiguous()

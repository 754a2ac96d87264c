"""An independent implementation of how llm-awq writes its real-quant dumps, rewritten from mit-han-lab/llm-awq
@ d6e797a (read, not copied): `awq/quantize/quantizer.py` (pseudo_quantize_tensor, real_quantize_model_weight),
`awq/quantize/qmodule.py` (calculate_zeros_width, pack_intweight, WQLinear.from_linear) and `awq/entry.py`
(`--q_backend real --dump_quant`: torch.save(model.state_dict()) of the fp16 HF model, named *-v2.pt).

Nothing here imports vila_edge: the tests hold vila_edge's reader to what this writes.
"""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def pseudo_quantize_tensor(w: torch.Tensor, group: int):
    """quantizer.pseudo_quantize_tensor(n_bit=4, zero_point=True, get_scale_zp=True), in w's dtype as llm-awq runs it
    (fp16): -> (ŵ [N, K], scales [N, K/G], zeros [N, K/G])."""
    n, k = w.shape
    g = w.reshape(-1, group)
    hi, lo = g.amax(dim=1, keepdim=True), g.amin(dim=1, keepdim=True)
    scales = (hi - lo).clamp(min=1e-5) / 15
    zeros = (-torch.round(lo / scales)).clamp_(0, 15)
    w_hat = (torch.clamp(torch.round(g / scales) + zeros, 0, 15) - zeros) * scales
    return w_hat.reshape(n, k), scales.view(n, -1), zeros.view(n, -1)


def calculate_zeros_width(k: int, group: int, pack_num: int = 8) -> int:
    """qmodule.calculate_zeros_width: K/G in words of 8 groups, rounded up to 1 (G >= 128), 2 (G 64) or 4 (G 32)."""
    multiplier = 1 if group >= 128 else {64: 2, 32: 4}[group]
    words = (k // group + pack_num - 1) // pack_num
    return (words + multiplier - 1) // multiplier * multiplier


def pack_intweight(intweight: torch.Tensor, interleave: int = 4, kstride: int = 64) -> torch.Tensor:
    """qmodule.pack_intweight: int [N, K] in 0..15 -> int16 [N/4, K]."""
    n, k = intweight.shape
    x = intweight.numpy().astype(np.int32)
    # in each 32 along K: 0, 1, 8, 9, 16, 17, 24, 25, ... (blocks of 2 taken across 4 rows of 8)
    x = x.reshape(n, k // 32, 4, 4, 2).transpose(0, 1, 3, 2, 4).reshape(n, k // 32, 32)
    # in each 8: 0, 2, 4, 6, 1, 3, 5, 7 (for the kernel's lop3 dequantisation)
    x = x.reshape(n, k // 32, 4, 4, 2).transpose(0, 1, 2, 4, 3).reshape(n, k)
    # 4 output rows interleaved per stride of 64 along K, then 4 consecutive values to one int16 word
    x = x.reshape(n // interleave, interleave, k // kstride, kstride).transpose(0, 2, 1, 3)
    x = x.reshape(n // interleave, k // kstride, kstride, interleave)
    words = x[..., 0] | (x[..., 1] << 4) | (x[..., 2] << 8) | (x[..., 3] << 12)
    return torch.tensor(words.reshape(n // interleave, k).astype("int16"))


def wqlinear_buffers(w_hat: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int,
                     bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """WQLinear.from_linear(linear, 4, group, scales=scales, zeros=zeros) -> its state dict entries."""
    n, k = w_hat.shape
    dtype = scales.dtype
    qscales = torch.zeros(n, calculate_zeros_width(k, group) * 8, dtype=dtype)
    qscales[:, : scales.shape[1]] = scales
    scale_zeros = zeros * scales
    cols = torch.arange(k) // group  # from_linear's loop over input columns idx, group idx // group_size
    intweight = torch.round((w_hat + scale_zeros[:, cols]) / qscales[:, cols]).to(torch.int32)
    scaled_zeros = torch.zeros_like(qscales)
    scaled_zeros[:, : scales.shape[1]] = -(qscales[:, : scales.shape[1]] * zeros.to(torch.float32)).to(dtype)
    out = {"qweight": pack_intweight(intweight), "scales": qscales.t().contiguous(),
           "scaled_zeros": scaled_zeros.t().contiguous()}
    if bias is not None:
        out["bias"] = bias.clone().to(dtype)
    return out


def write_dump(llm_dir: Path, path: Path, group: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """entry.py --q_backend real --dump_quant: the fp16 model from llm_dir, every decoder Linear real-quantized, its
    state dict saved to path. Returns {linear: (q int [N, K], scales fp16 [N, K/G], zeros [N, K/G])}, the truth."""
    model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float16).eval()
    state, truth = model.state_dict(), {}
    for i in range(model.config.num_hidden_layers):
        for name in LINEARS:
            base = f"model.layers.{i}.{name}"
            w = state.pop(f"{base}.weight")
            bias = state.pop(f"{base}.bias", None)
            w_hat, scales, zeros = pseudo_quantize_tensor(w, group)
            buffers = wqlinear_buffers(w_hat, scales, zeros, group, bias)
            state.update({f"{base}.{k}": v for k, v in buffers.items()})
            s, z = scales.float().repeat_interleave(group, 1), zeros.float().repeat_interleave(group, 1)
            q = torch.round(w_hat.float() / s) + z
            truth[base] = (q.to(torch.int32), scales, zeros.to(torch.int32))
    torch.save(state, path)
    return truth


def _moved(src: np.ndarray) -> np.ndarray:
    """pack_intweight's steps on an index array [N, K] -> [N/4, K, 4]: which source entry each word's nibble holds."""
    n, k = src.shape
    x = src.reshape(n, k // 32, 4, 4, 2).transpose(0, 1, 3, 2, 4).reshape(n, k // 32, 32)
    x = x.reshape(n, k // 32, 4, 4, 2).transpose(0, 1, 2, 4, 3).reshape(n, k)
    x = x.reshape(n // 4, 4, k // 64, 64).transpose(0, 2, 1, 3).reshape(n // 4, k // 64, 64, 4)
    return x.reshape(n // 4, k, 4)


def unpack_by_index(qweight: torch.Tensor) -> torch.Tensor:
    """int16 [N/4, K] -> q int32 [N, K], by sending each weight's (row, column) through pack_intweight's own steps."""
    n4, k = qweight.shape
    rows = _moved(np.broadcast_to(np.arange(n4 * 4)[:, None], (n4 * 4, k)))
    cols = _moved(np.broadcast_to(np.arange(k)[None, :], (n4 * 4, k)))
    nibbles = (qweight.numpy().view(np.uint16).astype(np.int32)[..., None] >> np.array([0, 4, 8, 12])) & 0xF
    q = np.full((n4 * 4, k), -1, np.int32)
    q[rows, cols] = nibbles
    return torch.from_numpy(q)


def tinychat_weight(qweight: torch.Tensor, scales: torch.Tensor, scaled_zeros: torch.Tensor, group: int):
    """What TinyChat's W4A16 kernels compute from the buffers, w = q·s + scaled_zero, in fp32 -> [N, K]."""
    q = unpack_by_index(qweight)
    groups = torch.arange(q.shape[1]) // group
    return q.float() * scales.t().float()[:, groups] + scaled_zeros.t().float()[:, groups]

import pytest
import torch

from vila_edge.errors import UsageError
from vila_edge.int4 import (
    AWQ_ORDER,
    dequantize_groups,
    pack_awq_gemm,
    pseudo_quantize,
    quantize_groups,
    unpack_awq_gemm,
)


def llm_awq_pseudo_quantize(w, group_size):
    """llm-awq's pseudo_quantize_tensor (zero_point=True, 4 bits), written out as published."""
    shape = w.shape
    w = w.reshape(-1, group_size)
    max_val, min_val = w.amax(dim=1, keepdim=True), w.amin(dim=1, keepdim=True)
    scales = (max_val - min_val).clamp(min=1e-5) / 15
    zeros = (-torch.round(min_val / scales)).clamp_(0, 15)
    w = (torch.clamp(torch.round(w / scales) + zeros, 0, 15) - zeros) * scales
    return w.reshape(shape)


@pytest.mark.parametrize("n,k,g", [(16, 256, 128), (24, 64, 32), (8, 96, 32)])
def test_pseudo_quantize_matches_llm_awq(n, k, g):
    w = torch.randn(n, k) * 0.05
    assert torch.equal(pseudo_quantize(w, g), llm_awq_pseudo_quantize(w, g))


def test_error_is_within_half_a_step():
    w = torch.randn(32, 256)
    q, scales, zeros = quantize_groups(w, 64)
    err = (dequantize_groups(q, scales, zeros) - w).abs().reshape(32, 4, 64)
    assert q.max() <= 15 and (err <= scales[..., None] / 2 + 1e-6).all()


def test_group_size_must_divide_in_features():
    with pytest.raises(UsageError, match="--group-size 128 does not divide in_features 96"):
        quantize_groups(torch.randn(8, 96), 128)


def test_gemm_layout_shapes_and_round_trip():
    w = torch.randn(64, 256)
    q, scales, zeros = quantize_groups(w, 128)
    packed = pack_awq_gemm(q, scales, zeros)
    assert packed["qweight"].shape == (256, 8) and packed["qweight"].dtype == torch.int32
    assert packed["qzeros"].shape == (2, 8) and packed["qzeros"].dtype == torch.int32
    assert packed["scales"].shape == (2, 64) and packed["scales"].dtype == torch.float16
    q2, s2, z2 = unpack_awq_gemm(**packed)
    assert torch.equal(q2, q) and torch.equal(z2, zeros) and torch.equal(s2, scales.half().float())


def test_nibble_order_is_awq_order():
    # input row 0 holds value j at output column j (j < 8): word 0 reads, nibble by nibble, AWQ_ORDER
    q = torch.zeros(8, 128, dtype=torch.uint8)
    q[:, 0] = torch.arange(8, dtype=torch.uint8)
    word = pack_awq_gemm(q, torch.ones(8, 1), torch.zeros(8, 1, dtype=torch.uint8))["qweight"][0, 0].item()
    nibbles = [(word >> (4 * i)) & 0xF for i in range(8)]
    assert nibbles == list(AWQ_ORDER) == [0, 2, 4, 6, 1, 3, 5, 7]
    q[:, 0] = 15  # all bits set: the word is -1 as int32
    assert pack_awq_gemm(q, torch.ones(8, 1), torch.zeros(8, 1, dtype=torch.uint8))["qweight"][0, 0].item() == -1


def autoawq_dequantize(qweight, qzeros, scales, group_size):
    """AutoAWQ utils/packing_utils.py: unpack_awq + reverse_awq_order + dequantize, as published -> W^T [K, N]."""
    shifts = torch.arange(0, 32, 4)
    iw = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(torch.int8).view(qweight.shape[0], -1)
    iz = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(torch.int8).view(qzeros.shape[0], -1)
    order = torch.arange(iw.shape[-1]).view(-1, 8)[:, [0, 4, 1, 5, 2, 6, 3, 7]].view(-1)
    iw, iz = torch.bitwise_and(iw[:, order], 15), torch.bitwise_and(iz[:, order], 15)
    z = iz.repeat_interleave(group_size, dim=0)
    s = scales.repeat_interleave(group_size, dim=0)
    return (iw - z).float() * s.float()


def test_autoawq_reads_what_we_pack():
    w = torch.randn(48, 256)
    q, scales, zeros = quantize_groups(w, 64)
    packed = pack_awq_gemm(q, scales, zeros)
    ours = dequantize_groups(q, scales.half().float(), zeros)
    assert torch.equal(autoawq_dequantize(packed["qweight"], packed["qzeros"], packed["scales"], 64), ours.t())

"""Dispatch's kernel tables: each ISA table fills what it leaves empty from the table below it
(avx512vnni <- avx512 <- avx2 <- ref, neon-dotprod <- neon <- ref), so no entry is ever empty."""

import numpy as np
import pytest

from vila_edge import _runtime

KERNELS = _runtime.supported_kernels()
VISION = ["i8_gemm", "f32_gemm", "quantize_u8", "layer_norm", "gelu", "softmax"]  # the vision tower's (cpu/vit.h)
FP16 = ["to_fp16", "from_fp16"]  # the KV cache's and the embedding table's conversions: F16C on x86, portable on NEON
ENTRIES = ["q4_matmul", "q8_matmul", "f16_matmul", "attend", "attend_f16", "attend_q8", "q4_matmul_f32", "quantize", *VISION,
           "peak", *FP16]
ATTEND = ("attend", "attend_f16", "attend_q8")
VISION_FLOAT = ("quantize_u8", "layer_norm", "gelu")  # AVX2's for every x86 table


def own(table, *entries):
    return {e: table for e in entries}


# Where each table's entries come from, for every table there is.
EXPECTED = {
    "ref": own("ref", *ENTRIES),  # every table its own peak probe
    "avx2": own("avx2", *ENTRIES),
    "avx512": {**own("avx512", "q4_matmul", "q8_matmul", "f16_matmul", "i8_gemm", "f32_gemm", "softmax", "peak"),
               **own("avx2", *ATTEND, "q4_matmul_f32", "quantize", *VISION_FLOAT, *FP16)},
    "avx512vnni": {**own("avx512vnni", "q4_matmul", "q8_matmul", "i8_gemm", "peak"), **own("avx512", "f16_matmul", "f32_gemm", "softmax"),
                   **own("avx2", *ATTEND, "q4_matmul_f32", "quantize", *VISION_FLOAT, *FP16)},
    # NEON runs the vision tower on the portable kernels for now
    "neon": {**own("neon", "q4_matmul", "q8_matmul", "f16_matmul", *ATTEND, "quantize"),
             **own("ref", "q4_matmul_f32", *VISION, "peak", *FP16)},
    "neon-dotprod": {**own("neon-dotprod", "q4_matmul", "q8_matmul"), **own("neon", "f16_matmul", *ATTEND, "quantize"),
                     **own("ref", "q4_matmul_f32", *VISION, "peak", *FP16)},
}


@pytest.mark.parametrize("kernels", KERNELS)
def test_no_entry_is_empty_after_dispatch(kernels):
    sources = _runtime.kernel_sources(kernels)
    assert list(sources) == ENTRIES
    below = KERNELS[: KERNELS.index(kernels) + 1]  # supported_kernels lists ref first, each table on the one before
    assert all(source in below for source in sources.values()), sources


@pytest.mark.parametrize("kernels", EXPECTED)
def test_each_entry_resolves_to_the_nearest_table_that_has_it(kernels):
    if kernels not in KERNELS:
        pytest.skip(f"this CPU does not run {kernels} (it runs {', '.join(KERNELS)})")
    assert _runtime.kernel_sources(kernels) == EXPECTED[kernels]


def test_the_default_is_the_best_table():
    assert _runtime.kernel_sources() == _runtime.kernel_sources(_runtime.best_kernels())
    with pytest.raises(ValueError, match="not available"):
        _runtime.kernel_sources("sse2")


@pytest.mark.parametrize("kernels", KERNELS[1:])
def test_quantize_rounds_ties_to_even_like_ref(kernels):
    """x · 127 / amax landing on n + 1/2, zero blocks, a negative amax, an odd last block (k = 5 blocks)."""
    x = np.zeros((2, 160), np.float32)
    x[0, :64] = np.r_[127, np.arange(-31, 32) + 0.5]  # 127 / amax = 1
    x[1, :64] = np.r_[-254, np.arange(-63, 62, 2)]  # 127 / amax = 1/2
    x[:, 128:] = np.where(np.arange(32) % 2, -0.0, 0.25 * (np.arange(32) - 16))
    for a, b in zip(_runtime.quantize_activations(x, kernels), _runtime.quantize_activations(x, "ref")):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kernels", KERNELS)
def test_the_peak_probe_counts_its_work(kernels):
    """GMAC/s of the table's own multiply-accumulate (what the benchmarks set achieved GEMM rates against)."""
    for int8 in (True, False):
        assert _runtime.peak_gmacs(int8, threads=1, seconds=0.05, kernels=kernels) > 0.1

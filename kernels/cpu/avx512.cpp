// AVX-512 F/BW/VL without VNNI (compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c).
#if defined(__x86_64__) || defined(_M_X64)
#include "avx512_impl.h"

namespace vila {
namespace {

// Here rather than in avx512_impl.h: VNNI has nothing to add, so its table takes this one.
void f16_matmul(const F16Weight& w, const float* x, int m, float* y, int ldy, int j0, int j1) {
    for (int i = 0; i < m; ++i) {
        const float* xr = x + size_t(i) * w.k;
        for (int j = j0; j < j1; ++j) {
            const uint16_t* wr = w.w + size_t(j) * w.k;
            __m512 acc = _mm512_setzero_ps();
            int t = 0;
            for (; t + 16 <= w.k; t += 16)
                acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(wr + t))), _mm512_loadu_ps(xr + t), acc);
            float r = _mm512_reduce_add_ps(acc);
            for (; t < w.k; ++t) r += h2f(wr[t]) * xr[t];
            y[size_t(i) * ldy + j] = r;
        }
    }
}

}  // namespace

const Kernels kAvx512 = {"avx512", q4_matmul, q8_matmul, f16_matmul, nullptr, nullptr, nullptr, nullptr, nullptr,
                         i8_gemm, f32_gemm, nullptr, nullptr, nullptr, softmax, peak};
}
#endif

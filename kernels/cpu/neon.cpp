// AArch64 baseline NEON (every ARMv8 core).
#if defined(__aarch64__)
#include "neon_impl.h"

namespace vila {
namespace {

// Here rather than in neon_impl.h: the dot product has nothing to add, so its table takes this one.
void f16_matmul(const F16Weight& w, const float* x, int m, float* y, int ldy, int j0, int j1) {
    for (int i = 0; i < m; ++i) {
        const float* xr = x + size_t(i) * w.k;
        for (int j = j0; j < j1; ++j) {
            const uint16_t* wr = w.w + size_t(j) * w.k;
            float32x4_t acc = vdupq_n_f32(0.f);
            int t = 0;
            for (; t + 4 <= w.k; t += 4)
                acc = vfmaq_f32(acc, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(wr + t))), vld1q_f32(xr + t));
            float r = vaddvq_f32(acc);
            for (; t < w.k; ++t) r += h2f(wr[t]) * xr[t];
            y[size_t(i) * ldy + j] = r;
        }
    }
}

}  // namespace

const Kernels kNeon = {"neon", q4_matmul, q8_matmul, f16_matmul, nullptr, nullptr, nullptr};
}
#endif

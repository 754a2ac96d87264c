// AArch64 NEON kernels, included by neon.cpp and, with VILA_DOTPROD, by neon_dotprod.cpp
// (compiled with -march=armv8.2-a+dotprod: vdotq_s32 in place of widening multiplies): the integer matmuls.
#include <arm_neon.h>

#include <vector>

#include "kernels.h"

namespace vila {
namespace {

inline float h2f(uint16_t h) {
    __fp16 v;
    __builtin_memcpy(&v, &h, 2);
    return float(v);
}

// Σ w·x over 32 int8 pairs, as 4 int32 lanes.
inline int32x4_t dot32(int8x16_t w0, int8x16_t w1, const int8_t* x) {
    int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
#ifdef VILA_DOTPROD
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#else
    int16x8_t p = vmull_s8(vget_low_s8(w0), vget_low_s8(x0));
    p = vmlal_s8(p, vget_high_s8(w0), vget_high_s8(x0));
    int16x8_t q = vmull_s8(vget_low_s8(w1), vget_low_s8(x1));
    q = vmlal_s8(q, vget_high_s8(w1), vget_high_s8(x1));
    return vpadalq_s16(vpaddlq_s16(p), q);
#endif
}

inline float zero_term(const uint16_t* s, const uint8_t* z, const float* X, int ng) {
    float32x4_t acc = vdupq_n_f32(0.f);
    int g = 0;
    for (; g + 4 <= ng; g += 4) {
        float32x4_t sv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(s + g)));
        float32x4_t zv = vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vld1_u8(z + g)))));
        acc = vfmaq_f32(acc, vmulq_f32(sv, zv), vld1q_f32(X + g));
    }
    float r = vaddvq_f32(acc);
    for (; g < ng; ++g) r += h2f(s[g]) * float(z[g]) * X[g];
    return r;
}

template <int MT>
void q4_tile(const Q4Weight& w, const ActQ8& x, int i0, const float* X, float* y, int ldy, int j0, int j1) {
    const int nb = w.k / QK, ng = w.k / w.group, gshift = __builtin_ctz(w.group / QK);
    const size_t row_bytes = q4_row_bytes(w.k);
    const uint8x16_t m4 = vdupq_n_u8(15);
    const int8_t* xq[MT];
    const float* xd[MT];
    for (int r = 0; r < MT; ++r) xq[r] = x.q + size_t(i0 + r) * w.k, xd[r] = x.d + size_t(i0 + r) * nb;
    for (int j = j0; j < j1; ++j) {
        const uint8_t* wq = w.q + size_t(j) * row_bytes;
        const uint16_t* ws = w.scales + size_t(j) * ng;
        float32x4_t acc[MT];
        for (int r = 0; r < MT; ++r) acc[r] = vdupq_n_f32(0.f);
        for (int b = 0; b < nb; b += 2) {
            uint8x16_t v0 = vld1q_u8(wq + b * 16), v1 = vld1q_u8(wq + b * 16 + 16);
            int8x16_t a0 = vreinterpretq_s8_u8(vandq_u8(v0, m4)), a1 = vreinterpretq_s8_u8(vandq_u8(v1, m4));
            const float s0 = h2f(ws[b >> gshift]);
            if (gshift && b + 1 < nb) {  // groups of 64+: one weight and one activation scale for the pair
                int8x16_t c0 = vreinterpretq_s8_u8(vshrq_n_u8(v0, 4)), c1 = vreinterpretq_s8_u8(vshrq_n_u8(v1, 4));
                for (int r = 0; r < MT; ++r) {
                    int32x4_t p = vaddq_s32(dot32(a0, a1, xq[r] + b * QK), dot32(c0, c1, xq[r] + b * QK + QK));
                    acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(p), s0 * xd[r][b]);
                }
                continue;
            }
            for (int r = 0; r < MT; ++r)
                acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot32(a0, a1, xq[r] + b * QK)), s0 * xd[r][b]);
            if (b + 1 < nb) {
                int8x16_t c0 = vreinterpretq_s8_u8(vshrq_n_u8(v0, 4)), c1 = vreinterpretq_s8_u8(vshrq_n_u8(v1, 4));
                const float s1 = h2f(ws[(b + 1) >> gshift]);
                for (int r = 0; r < MT; ++r)
                    acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot32(c0, c1, xq[r] + b * QK + QK)), s1 * xd[r][b + 1]);
            }
        }
        for (int r = 0; r < MT; ++r)
            y[size_t(i0 + r) * ldy + j] =
                vaddvq_f32(acc[r]) - zero_term(ws, w.zeros + size_t(j) * ng, X + size_t(i0 + r) * ng, ng);
    }
}

void q4_matmul(const Q4Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1) {
    q4_matmul_tiles(w, x, j0, j1, [&](auto mt, int i, const float* X, int jc, int je) {
        q4_tile<decltype(mt)::value>(w, x, i, X, y, ldy, jc, je);
    });
}

void q8_matmul(const Q8Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1) {
    const int nb = w.k / QK;
    for (int i = 0; i < x.m; ++i) {
        const int8_t* xq = x.q + size_t(i) * w.k;
        const float* xd = x.d + size_t(i) * nb;
        for (int j = j0; j < j1; ++j) {
            const int8_t* wq = w.q + size_t(j) * w.k;
            const uint16_t* ws = w.scales + size_t(j) * nb;
            float32x4_t acc = vdupq_n_f32(0.f);
            for (int b = 0; b < nb; ++b) {
                int32x4_t p = dot32(vld1q_s8(wq + b * QK), vld1q_s8(wq + b * QK + 16), xq + b * QK);
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), h2f(ws[b]) * xd[b]);
            }
            y[size_t(i) * ldy + j] = vaddvq_f32(acc);
        }
    }
}

}  // namespace
}  // namespace vila

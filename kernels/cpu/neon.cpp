// AArch64 baseline NEON (every ARMv8 core).
#if defined(__aarch64__)
#include <algorithm>
#include <cmath>

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

// quantize_act with NEON: the same float ops, round-half-even (vcvtnq) and an order-free max, so the same bits.
void quantize(const float* x, int m, int k, int8_t* q, float* d, float* sum) {
    const int nb = k / QK;
    for (int i = 0; i < m; ++i)
        for (int b = 0; b < nb; b += 2) {
            const int blocks = b + 1 < nb ? 2 : 1;
            const float* xb = x + size_t(i) * k + b * QK;
            float32x4_t amax = vdupq_n_f32(0.f);
            for (int t = 0; t < blocks * QK; t += 4) amax = vmaxnmq_f32(amax, vabsq_f32(vld1q_f32(xb + t)));
            const float a = vmaxnmvq_f32(amax), scale = a / 127.f, inv = a > 0.f ? 127.f / a : 0.f;
            for (int h = 0; h < blocks; ++h) {
                int8_t* qb = q + size_t(i) * k + (b + h) * QK;
                int32x4_t s = vdupq_n_s32(0);
                for (int t = 0; t < QK; t += 8) {
                    const int32x4_t v0 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xb + h * QK + t), inv));
                    const int32x4_t v1 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xb + h * QK + t + 4), inv));
                    s = vaddq_s32(s, vaddq_s32(v0, v1));
                    vst1_s8(qb + t, vqmovn_s16(vcombine_s16(vqmovn_s32(v0), vqmovn_s32(v1))));
                }
                d[size_t(i) * nb + b + h] = scale;
                sum[size_t(i) * nb + b + h] = scale * float(vaddvq_s32(s));
            }
        }
}

// e^x for x <= 0: avx2.cpp's Cephes polynomial on four lanes (x clamped at -87).
inline float32x4_t exp_nonpositive(float32x4_t x) {
    x = vmaxq_f32(x, vdupq_n_f32(-87.f));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504f));
    float32x4_t r = vfmsq_n_f32(x, n, 0.693359375f);
    r = vfmsq_n_f32(r, n, -2.12194440e-4f);
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.f)), vmulq_f32(p, r), r);
    const int32x4_t two_n = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(two_n));
}

// Rows of a KV cache as 4 floats at a time: row t, columns d .. d + 3 (d a multiple of 4), whatever the storage.
struct F32Rows {
    const float* x;
    int hd;
    float32x4_t load(size_t t, int d) const { return vld1q_f32(x + t * hd + d); }
};

struct F16Rows {  // four halves to floats (fcvtl)
    const uint16_t* x;
    int hd;
    float32x4_t load(size_t t, int d) const { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + t * hd + d))); }
};

struct Q8Rows {  // four int8 (one 32-bit load, no read past the row) widened to floats, times their block's scale
    KvQ8 c;
    int hd;
    float32x4_t load(size_t t, int d) const {
        int32_t four;
        __builtin_memcpy(&four, c.q + t * hd + d, 4);
        const int16x8_t w = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(four)));
        return vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), h2f(c.d[t * (hd / QK) + d / QK]));
    }
};

template <class Rows>
inline float dot(const float* q, const Rows& k, size_t t, int hd) {
    float32x4_t acc = vdupq_n_f32(0.f);
    for (int d = 0; d < hd; d += 4) acc = vfmaq_f32(acc, vld1q_f32(q + d), k.load(t, d));
    return vaddvq_f32(acc);
}

// Four keys at a time, four accumulators: the scores come out as one vector.
template <class Rows>
inline float32x4_t scores4(const float* q, const Rows& k, size_t t0, int hd) {
    float32x4_t a[4];
    for (auto& v : a) v = vdupq_n_f32(0.f);
    for (int d = 0; d < hd; d += 4) {
        const float32x4_t qd = vld1q_f32(q + d);
        for (int j = 0; j < 4; ++j) a[j] = vfmaq_f32(a[j], qd, k.load(t0 + j, d));
    }
    return vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3]));
}

// out[d0, d0 + 4C) = inv · Σ_t p_t v_t[d0, d0 + 4C), that slice of the output row kept in registers.
template <int C, class Rows>
void weighted_sum(const float* p, const Rows& v, int d0, int n, float inv, float* out) {
    float32x4_t o[C];
    for (auto& r : o) r = vdupq_n_f32(0.f);
    for (int t = 0; t < n; ++t)
        for (int c = 0; c < C; ++c) o[c] = vfmaq_n_f32(o[c], v.load(t, d0 + 4 * c), p[t]);
    for (int c = 0; c < C; ++c) vst1q_f32(out + d0 + 4 * c, vmulq_n_f32(o[c], inv));
}

// One query row over n cached rows (hd a multiple of 4): scores, softmax and sums in fp32, for every storage.
template <class Rows>
void attend_rows(const float* q, const Rows& k, const Rows& v, int n, int hd, float scale, float* p, float* out) {
    int t = 0;
    float32x4_t vmax = vdupq_n_f32(-INFINITY);
    for (; t + 4 <= n; t += 4) {
        const float32x4_t s = vmulq_n_f32(scores4(q, k, t, hd), scale);
        vst1q_f32(p + t, s);
        vmax = vmaxq_f32(vmax, s);
    }
    float mx = vmaxvq_f32(vmax);
    for (; t < n; ++t) mx = std::max(mx, p[t] = dot(q, k, t, hd) * scale);
    float32x4_t vsum = vdupq_n_f32(0.f);
    for (t = 0; t + 4 <= n; t += 4) {
        const float32x4_t e = exp_nonpositive(vsubq_f32(vld1q_f32(p + t), vdupq_n_f32(mx)));
        vst1q_f32(p + t, e);
        vsum = vaddq_f32(vsum, e);
    }
    float sum = vaddvq_f32(vsum);
    for (; t < n; ++t) sum += p[t] = std::exp(p[t] - mx);
    // 32 registers: 16 accumulators (64 floats of the row) per pass over p and v, then narrower passes
    int d = 0;
    for (; d + 64 <= hd; d += 64) weighted_sum<16>(p, v, d, n, 1.f / sum, out);
    for (; d + 16 <= hd; d += 16) weighted_sum<4>(p, v, d, n, 1.f / sum, out);
    for (; d < hd; d += 4) weighted_sum<1>(p, v, d, n, 1.f / sum, out);
}

void attend(const float* q, const float* k, const float* v, int n, int hd, float scale, float* p, float* out) {
    if (hd % 4) return attend_ref(q, k, v, n, hd, scale, p, out);
    attend_rows(q, F32Rows{k, hd}, F32Rows{v, hd}, n, hd, scale, p, out);
}

void attend_f16(const float* q, const uint16_t* k, const uint16_t* v, int n, int hd, float scale, float* p, float* out) {
    if (hd % 4) return attend_f16_ref(q, k, v, n, hd, scale, p, out);
    attend_rows(q, F16Rows{k, hd}, F16Rows{v, hd}, n, hd, scale, p, out);
}

void attend_q8(const float* q, KvQ8 k, KvQ8 v, int n, int hd, float scale, float* p, float* out) {
    if (hd % QK) return attend_q8_ref(q, k, v, n, hd, scale, p, out);
    attend_rows(q, Q8Rows{k, hd}, Q8Rows{v, hd}, n, hd, scale, p, out);
}

}  // namespace

const Kernels kNeon = {"neon", q4_matmul, q8_matmul, f16_matmul, attend, attend_f16, attend_q8, nullptr, quantize};
}
#endif

// x86-64 with AVX2, FMA and F16C (compiled with -mavx2 -mfma -mf16c; dispatched only where present).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <vector>

#include "kernels.h"

namespace vila {
namespace {

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// u8 × s8 products summed in fours: 8 int32 lanes (no overflow: 15 · 127 · 4 fits int16 pairs).
inline __m256 dot_u8s8(__m256i w, const int8_t* x) {
    __m256i p = _mm256_maddubs_epi16(w, _mm256_loadu_si256((const __m256i*)x));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

// Two blocks under one scale: their int16 pair sums add without overflow (2 · 2 · 15 · 127 < 2^15).
inline __m256 dot_pair(__m256i w0, __m256i w1, const int8_t* x) {
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(w0, _mm256_loadu_si256((const __m256i*)x)),
                                 _mm256_maddubs_epi16(w1, _mm256_loadu_si256((const __m256i*)(x + QK))));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// Σ_g scale_g · zero_g · X_g for one weight row.
inline float zero_term(const uint16_t* s, const uint8_t* z, const float* X, int ng) {
    __m256 acc = _mm256_setzero_ps();
    int g = 0;
    for (; g + 8 <= ng; g += 8) {
        __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + g)));
        __m256 zv = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(z + g))));
        acc = _mm256_fmadd_ps(_mm256_mul_ps(sv, zv), _mm256_loadu_ps(X + g), acc);
    }
    float r = hsum(acc);
    for (; g < ng; ++g) r += h2f(s[g]) * float(z[g]) * X[g];
    return r;
}

// MT activation rows against weight rows [j0, j1): each weight pair is unpacked once per MT rows.
template <int MT>
void q4_tile(const Q4Weight& w, const ActQ8& x, int i0, const float* X, float* y, int ldy, int j0, int j1) {
    const int nb = w.k / QK, ng = w.k / w.group, gshift = __builtin_ctz(w.group / QK);
    const size_t row_bytes = q4_row_bytes(w.k);
    const __m256i m4 = _mm256_set1_epi8(15);
    const int8_t* xq[MT];
    const float* xd[MT];
    for (int r = 0; r < MT; ++r) xq[r] = x.q + size_t(i0 + r) * w.k, xd[r] = x.d + size_t(i0 + r) * nb;
    for (int j = j0; j < j1; ++j) {
        const uint8_t* wq = w.q + size_t(j) * row_bytes;
        const uint16_t* ws = w.scales + size_t(j) * ng;
        __m256 acc[MT];
        for (int r = 0; r < MT; ++r) acc[r] = _mm256_setzero_ps();
        int b = 0;
        for (; b + 2 <= nb; b += 2) {
            __m256i v = _mm256_loadu_si256((const __m256i*)(wq + b * 16));
            __m256i w0 = _mm256_and_si256(v, m4), w1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            if (gshift) {  // groups of 64+: one weight scale and one activation scale for the pair
                const float s = h2f(ws[b >> gshift]);
                for (int r = 0; r < MT; ++r)
                    acc[r] = _mm256_fmadd_ps(dot_pair(w0, w1, xq[r] + b * QK), _mm256_set1_ps(s * xd[r][b]), acc[r]);
                continue;
            }
            float s0 = h2f(ws[b]), s1 = h2f(ws[b + 1]);
            for (int r = 0; r < MT; ++r) {
                acc[r] = _mm256_fmadd_ps(dot_u8s8(w0, xq[r] + b * QK), _mm256_set1_ps(s0 * xd[r][b]), acc[r]);
                acc[r] = _mm256_fmadd_ps(dot_u8s8(w1, xq[r] + b * QK + QK), _mm256_set1_ps(s1 * xd[r][b + 1]), acc[r]);
            }
        }
        if (b < nb) {  // odd last block: low nibbles only
            __m256i w0 = _mm256_and_si256(_mm256_loadu_si256((const __m256i*)(wq + b * 16)), m4);
            float s0 = h2f(ws[b >> gshift]);
            for (int r = 0; r < MT; ++r)
                acc[r] = _mm256_fmadd_ps(dot_u8s8(w0, xq[r] + b * QK), _mm256_set1_ps(s0 * xd[r][b]), acc[r]);
        }
        for (int r = 0; r < MT; ++r)
            y[size_t(i0 + r) * ldy + j] = hsum(acc[r]) - zero_term(ws, w.zeros + size_t(j) * ng, X + size_t(i0 + r) * ng, ng);
    }
}

void q4_matmul(const Q4Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1) {
    thread_local std::vector<float> X;
    X.resize(size_t(x.m) * (w.k / w.group));
    group_sums(x, w.group, X.data());
    constexpr int JC = 16;  // weight rows kept in L1 while every activation row passes over them
    for (int jc = j0; jc < j1; jc += JC) {
        const int je = jc + JC < j1 ? jc + JC : j1;
        int i = 0;
        for (; i + 4 <= x.m; i += 4) q4_tile<4>(w, x, i, X.data(), y, ldy, jc, je);
        switch (x.m - i) {
            case 3: q4_tile<3>(w, x, i, X.data(), y, ldy, jc, je); break;
            case 2: q4_tile<2>(w, x, i, X.data(), y, ldy, jc, je); break;
            case 1: q4_tile<1>(w, x, i, X.data(), y, ldy, jc, je); break;
        }
    }
}

template <int MT>
void q8_tile(const Q8Weight& w, const ActQ8& x, int i0, float* y, int ldy, int j0, int j1) {
    const int nb = w.k / QK;
    for (int j = j0; j < j1; ++j) {
        const int8_t* wq = w.q + size_t(j) * w.k;
        const uint16_t* ws = w.scales + size_t(j) * nb;
        __m256 acc[MT];
        for (int r = 0; r < MT; ++r) acc[r] = _mm256_setzero_ps();
        for (int b = 0; b < nb; ++b) {
            __m256i v = _mm256_loadu_si256((const __m256i*)(wq + b * QK));
            __m256i av = _mm256_sign_epi8(v, v);  // |w| as u8; the sign moves onto x
            float s = h2f(ws[b]);
            for (int r = 0; r < MT; ++r) {
                const int8_t* xr = x.q + size_t(i0 + r) * w.k + b * QK;
                __m256i sx = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i*)xr), v);
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(av, sx), _mm256_set1_epi16(1));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s * x.d[size_t(i0 + r) * nb + b]), acc[r]);
            }
        }
        for (int r = 0; r < MT; ++r) y[size_t(i0 + r) * ldy + j] = hsum(acc[r]);
    }
}

void q8_matmul(const Q8Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1) {
    int i = 0;
    for (; i + 4 <= x.m; i += 4) q8_tile<4>(w, x, i, y, ldy, j0, j1);
    for (; i < x.m; ++i) q8_tile<1>(w, x, i, y, ldy, j0, j1);
}

void f16_matmul(const F16Weight& w, const float* x, int m, float* y, int ldy, int j0, int j1) {
    for (int i = 0; i < m; ++i) {
        const float* xr = x + size_t(i) * w.k;
        for (int j = j0; j < j1; ++j) {
            const uint16_t* wr = w.w + size_t(j) * w.k;
            __m256 acc = _mm256_setzero_ps();
            int t = 0;
            for (; t + 8 <= w.k; t += 8)
                acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(wr + t))), _mm256_loadu_ps(xr + t), acc);
            float r = hsum(acc);
            for (; t < w.k; ++t) r += h2f(wr[t]) * xr[t];
            y[size_t(i) * ldy + j] = r;
        }
    }
}

float dot(const float* a, const float* b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int t = 0;
    for (; t + 8 <= n; t += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t), acc);
    float s = hsum(acc);
    for (; t < n; ++t) s += a[t] * b[t];
    return s;
}

// Dequantise each 64-weight pair to floats on the fly: (q - zero) · scale, exact in fp32.
void q4_matmul_f32(const Q4Weight& w, const float* x, int m, float* y, int ldy, int j0, int j1) {
    const int ng = w.k / w.group, nb = w.k / QK;
    const __m256i m4 = _mm256_set1_epi8(15);
    alignas(32) uint8_t q[64];
    for (int j = j0; j < j1; ++j) {
        const uint8_t* wq = w.q + size_t(j) * q4_row_bytes(w.k);
        for (int i = 0; i < m; ++i) {
            const float* xr = x + size_t(i) * w.k;
            __m256 acc = _mm256_setzero_ps();
            for (int b = 0; b < nb; b += 2) {
                __m256i v = _mm256_loadu_si256((const __m256i*)(wq + b * 16));
                _mm256_store_si256((__m256i*)q, _mm256_and_si256(v, m4));
                _mm256_store_si256((__m256i*)(q + 32), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
                for (int t = 0; t < (b + 1 < nb ? 64 : 32); t += 8) {
                    const int g = (b * QK + t) / w.group;
                    const __m256 s = _mm256_set1_ps(h2f(w.scales[size_t(j) * ng + g]));
                    const __m256 z = _mm256_set1_ps(float(w.zeros[size_t(j) * ng + g]));
                    __m256 wf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(q + t))));
                    acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_sub_ps(wf, z), s), _mm256_loadu_ps(xr + b * QK + t), acc);
                }
            }
            y[size_t(i) * ldy + j] = hsum(acc);
        }
    }
}

}  // namespace

const Kernels kAvx2 = {"avx2", q4_matmul, q8_matmul, f16_matmul, dot, q4_matmul_f32};

}  // namespace vila
#endif

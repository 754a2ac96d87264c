// x86-64 with AVX2, FMA and F16C (compiled with -mavx2 -mfma -mf16c; dispatched only where present).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

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

// quantize_act's contract with AVX2: the same float ops and round-half-even, so the same bits.
void quantize(const float* x, int m, int k, int8_t* q, float* d, float* sum) {
    const int nb = k / QK;
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (int i = 0; i < m; ++i)
        for (int b = 0; b < nb; b += 2) {
            const int blocks = b + 1 < nb ? 2 : 1;
            const float* xb = x + size_t(i) * k + b * QK;
            __m256 amax = _mm256_setzero_ps();
            for (int t = 0; t < blocks * QK; t += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + t)));
            alignas(32) float lanes[8];
            _mm256_store_ps(lanes, amax);
            float a = 0.f;
            for (float l : lanes) a = a > l ? a : l;
            const float scale = a / 127.f;
            const __m256 inv = _mm256_set1_ps(a > 0.f ? 127.f / a : 0.f);
            for (int h = 0; h < blocks; ++h) {
                __m256i v[4];
                for (int c = 0; c < 4; ++c) v[c] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + h * QK + 8 * c), inv));
                const __m256i s32 = _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3]));
                __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
                packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // undo the lane interleave
                _mm256_storeu_si256((__m256i*)(q + size_t(i) * k + (b + h) * QK), packed);
                alignas(32) int32_t parts[8];
                _mm256_store_si256((__m256i*)parts, s32);
                int total = 0;
                for (int32_t part : parts) total += part;
                d[size_t(i) * nb + b + h] = scale;
                sum[size_t(i) * nb + b + h] = scale * float(total);
            }
        }
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
        const uint8_t* ahead = j + PREFETCH_ROWS < w.n ? wq + PREFETCH_ROWS * row_bytes : wq;  // within the weight
        const uint16_t* ws = w.scales + size_t(j) * ng;
        __m256 acc[MT];
        for (int r = 0; r < MT; ++r) acc[r] = _mm256_setzero_ps();
        int b = 0;
        for (; b + 2 <= nb; b += 2) {
            _mm_prefetch((const char*)(ahead + b * 16), _MM_HINT_T0);
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

// ---- prefill (PANEL_ROWS or more rows): a GEMM over panels of 8 output columns, as avx512_impl.h's with 256-bit
// vectors: each vector holds 4 consecutive k of 8 columns (column c in dword c), so maddubs with 4 activation bytes
// broadcast feeds 8 columns, a block's sums stay integer until its scales apply as 8-wide vectors, and no horizontal
// sum is left. Every row's arithmetic is the same whatever the row tile (see PANEL_ROWS).
constexpr int PANEL = 8;

using Panel = Q4Panel<PANEL>;

void pack_panel(const Q4Weight& w, int j0, int cols, Panel& p) {
    const int pairs = (w.k / QK + 1) / 2;
    const size_t row_bytes = q4_row_bytes(w.k);
    alignas(32) int32_t offsets[PANEL];
    for (int c = 0; c < PANEL; ++c) offsets[c] = int32_t(std::min(c, cols - 1) * row_bytes);  // spare lanes: any column
    const __m256i idx = _mm256_load_si256((const __m256i*)offsets);
    const int* base = reinterpret_cast<const int*>(w.q + size_t(j0) * row_bytes);
    p.q.resize(size_t(pairs) * 8 * PANEL);
    for (int pr = 0; pr < pairs; ++pr)
        for (int t = 0; t < 8; ++t)
            _mm256_storeu_si256((__m256i*)(p.q.data() + (size_t(pr) * 8 + t) * PANEL), _mm256_i32gather_epi32(base + pr * 8 + t, idx, 1));
    panel_scales<PANEL>(w, j0, cols, p.s, p.sz, h2f);
}

inline __m256i broadcast4(const int8_t* x) {
    int32_t v;
    std::memcpy(&v, x, 4);
    return _mm256_set1_epi32(v);
}

// Σ over k of one block for 8 columns (low nibbles: shift 0; high: 4): maddubs pairs of t summed in int16 (4 products
// of at most 15 · 127 each), then widened once per pair of t. Unpacking per row costs less than keeping the 8 unpacked
// vectors live across the rows (measured: AVX2's 16 registers spill).
inline __m256i block_dot(const uint32_t* w, int shift, const int8_t* x) {
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    for (int t = 0; t < 8; t += 2) {
        const __m256i w0 = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i*)(w + t * PANEL)), shift), m4);
        const __m256i w1 = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i*)(w + (t + 1) * PANEL)), shift), m4);
        const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(w0, broadcast4(x + 4 * t)),
                                           _mm256_maddubs_epi16(w1, broadcast4(x + 4 * t + 4)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    return acc;
}

// Rows i0 .. i0 + MT - 1 against a panel: y = Σ_b s_b · d_b · Σ_k q x  -  Σ_g s_g · z_g · X_g, 8 columns at once.
template <int MT>
void panel_rows(const Panel& p, const ActQ8& x, int i0, const float* X, int ng, float* y, int ldy, int j0, int cols) {
    const int nb = x.k / QK;
    __m256 acc[MT];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint32_t* v = p.q.data() + size_t(b / 2) * 8 * PANEL;
        const __m256 s = _mm256_loadu_ps(p.s.data() + size_t(b) * PANEL);
        for (int r = 0; r < MT; ++r) {
            const size_t row = size_t(i0 + r);
            const __m256i dot = block_dot(v, 4 * (b & 1), x.q + row * x.k + b * QK);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(s, _mm256_set1_ps(x.d[row * nb + b])), acc[r]);
        }
    }
    alignas(32) float out[PANEL];
    for (int r = 0; r < MT; ++r) {
        for (int g = 0; g < ng; ++g)
            acc[r] = _mm256_fnmadd_ps(_mm256_set1_ps(X[size_t(i0 + r) * ng + g]), _mm256_loadu_ps(p.sz.data() + size_t(g) * PANEL), acc[r]);
        float* yr = y + size_t(i0 + r) * ldy + j0;
        if (cols == PANEL) {
            _mm256_storeu_ps(yr, acc[r]);
        } else {
            _mm256_store_ps(out, acc[r]);
            std::copy(out, out + cols, yr);
        }
    }
}

void q4_gemm(const Q4Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1) {
    thread_local Panel p;
    const int ng = w.k / w.group;
    q4_gemm_panels<PANEL>(w, x, j0, j1, [&](int jc, int cols) { pack_panel(w, jc, cols, p); },
                          [&](auto mt, int i, const float* X, int jc, int cols) {
                              panel_rows<decltype(mt)::value>(p, x, i, X, ng, y, ldy, jc, cols);
                          });
}

void q4_matmul(const Q4Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1) {
    if (x.m >= PANEL_ROWS) return q4_gemm(w, x, y, ldy, j0, j1);
    q4_matmul_tiles(w, x, j0, j1, [&](auto mt, int i, const float* X, int jc, int je) {
        q4_tile<decltype(mt)::value>(w, x, i, X, y, ldy, jc, je);
    });
}

template <int MT>
void q8_tile(const Q8Weight& w, const ActQ8& x, int i0, float* y, int ldy, int j0, int j1) {
    const int nb = w.k / QK;
    for (int j = j0; j < j1; ++j) {
        const int8_t* wq = w.q + size_t(j) * w.k;
        const int8_t* ahead = j + PREFETCH_ROWS < w.n ? wq + PREFETCH_ROWS * size_t(w.k) : wq;  // within the weight
        const uint16_t* ws = w.scales + size_t(j) * nb;
        __m256 acc[MT];
        for (int r = 0; r < MT; ++r) acc[r] = _mm256_setzero_ps();
        for (int b = 0; b < nb; ++b) {
            _mm_prefetch((const char*)(ahead + b * QK), _MM_HINT_T0);
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

// e^x for x <= 0 (Cephes' expf polynomial, relative error ~2e-7; below -87 flushes to 0).
inline __m256 exp_nonpositive(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}

// Rows of a KV cache as 8 floats at a time: row t, columns d .. d + 7 (d a multiple of 8), whatever the storage.
// A `blocked` storage also gives its rows unscaled (raw) with one scale per QK columns, which the loops below
// apply once per block rather than once per load.
struct F32Rows {
    static constexpr bool blocked = false;
    const float* x;
    int hd;
    __m256 load(size_t t, int d) const { return _mm256_loadu_ps(x + t * hd + d); }
};

struct F16Rows {  // F16C: eight halves to floats in one instruction
    static constexpr bool blocked = false;
    const uint16_t* x;
    int hd;
    __m256 load(size_t t, int d) const { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(x + t * hd + d))); }
};

struct Q8Rows {  // eight int8 widened to floats, times their block's scale
    static constexpr bool blocked = true;
    KvQ8 c;
    int hd;
    __m256 raw(size_t t, int d) const {
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(c.q + t * hd + d))));
    }
    float scale(size_t t, int d) const { return h2f(c.d[(t * hd + d) / QK]); }
    __m256 load(size_t t, int d) const { return _mm256_mul_ps(raw(t, d), _mm256_set1_ps(scale(t, d))); }
};

// Eight keys at a time, eight accumulators: the scores come out as one vector.
template <class Rows>
inline __m256 scores8(const float* q, const Rows& k, size_t t0, int hd) {
    __m256 a[8];
    for (auto& v : a) v = _mm256_setzero_ps();
    if constexpr (Rows::blocked) {  // hd a multiple of QK: a block's products summed, then scaled once
        for (int d0 = 0; d0 < hd; d0 += QK) {
            __m256 qb[4];
            for (int c = 0; c < 4; ++c) qb[c] = _mm256_loadu_ps(q + d0 + 8 * c);
            for (int j = 0; j < 8; ++j) {
                __m256 part = _mm256_mul_ps(qb[0], k.raw(t0 + j, d0));
                for (int c = 1; c < 4; ++c) part = _mm256_fmadd_ps(qb[c], k.raw(t0 + j, d0 + 8 * c), part);
                a[j] = _mm256_fmadd_ps(part, _mm256_set1_ps(k.scale(t0 + j, d0)), a[j]);
            }
        }
    } else {
        for (int d = 0; d < hd; d += 8) {
            const __m256 qd = _mm256_loadu_ps(q + d);
            for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(qd, k.load(t0 + j, d), a[j]);
        }
    }
    const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

// out = inv · Σ_t p_t v_t for a head of 8·C floats (a blocked storage's scales folded into p_t, per block).
template <int C, class Rows>
void weighted_sum(const float* p, const Rows& v, int n, float inv, float* out) {
    __m256 o[C];
    for (auto& r : o) r = _mm256_setzero_ps();
    for (int t = 0; t < n; ++t) {
        if constexpr (Rows::blocked) {
            for (int b = 0; b < C / 4; ++b) {
                const __m256 w = _mm256_set1_ps(p[t] * v.scale(t, b * QK));
                for (int c = 4 * b; c < 4 * b + 4; ++c) o[c] = _mm256_fmadd_ps(w, v.raw(t, 8 * c), o[c]);
            }
        } else {
            const __m256 w = _mm256_set1_ps(p[t]);
            for (int c = 0; c < C; ++c) o[c] = _mm256_fmadd_ps(w, v.load(t, 8 * c), o[c]);
        }
    }
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(o[c], _mm256_set1_ps(inv)));
}

// One query row over n cached rows (hd a multiple of 8): scores, softmax and sums in fp32, for every storage.
template <class Rows>
void attend_rows(const float* q, const Rows& k, const Rows& v, int n, int hd, float scale, float* p, float* out) {
    int t = 0;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (; t + 8 <= n; t += 8) {
        const __m256 s = _mm256_mul_ps(scores8(q, k, t, hd), _mm256_set1_ps(scale));
        _mm256_storeu_ps(p + t, s);
        vmax = _mm256_max_ps(vmax, s);
    }
    float mx = -INFINITY;
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vmax);
    for (float l : lanes) mx = std::max(mx, l);
    for (; t < n; ++t) {
        __m256 acc = _mm256_setzero_ps();
        for (int d = 0; d < hd; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), k.load(t, d), acc);
        mx = std::max(mx, p[t] = hsum(acc) * scale);
    }
    __m256 vsum = _mm256_setzero_ps();
    t = 0;
    for (; t + 8 <= n; t += 8) {
        const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(p + t), _mm256_set1_ps(mx)));
        _mm256_storeu_ps(p + t, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum(vsum);
    for (; t < n; ++t) sum += p[t] = std::exp(p[t] - mx);
    switch (hd) {  // the common head sizes keep the whole output row in registers
        case 64: return weighted_sum<8>(p, v, n, 1.f / sum, out);
        case 128: return weighted_sum<16>(p, v, n, 1.f / sum, out);
    }
    for (int d = 0; d < hd; d += 8) {
        __m256 o = _mm256_setzero_ps();
        for (t = 0; t < n; ++t) o = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), v.load(t, d), o);
        _mm256_storeu_ps(out + d, _mm256_mul_ps(o, _mm256_set1_ps(1.f / sum)));
    }
}

void attend(const float* q, const float* k, const float* v, int n, int hd, float scale, float* p, float* out) {
    if (hd % 8) return attend_ref(q, k, v, n, hd, scale, p, out);
    attend_rows(q, F32Rows{k, hd}, F32Rows{v, hd}, n, hd, scale, p, out);
}

void attend_f16(const float* q, const uint16_t* k, const uint16_t* v, int n, int hd, float scale, float* p, float* out) {
    if (hd % 8) return attend_f16_ref(q, k, v, n, hd, scale, p, out);
    attend_rows(q, F16Rows{k, hd}, F16Rows{v, hd}, n, hd, scale, p, out);
}

void attend_q8(const float* q, KvQ8 k, KvQ8 v, int n, int hd, float scale, float* p, float* out) {
    if (hd % QK) return attend_q8_ref(q, k, v, n, hd, scale, p, out);
    attend_rows(q, Q8Rows{k, hd}, Q8Rows{v, hd}, n, hd, scale, p, out);
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

// ---- the vision tower ------------------------------------------------------------------------------------------

// acc += a · w and acc += p in place: GCC 12 keeps a tile's accumulator array in memory around the intrinsics' forms
inline __m256 fma_acc(__m256 acc, __m256 a, __m256 w) {
    __asm__("vfmadd231ps %2, %1, %0" : "+x"(acc) : "x"(a), "x"(w));
    return acc;
}
inline __m256i add_acc(__m256i acc, __m256i p) {
    __asm__("vpaddd %1, %0, %0" : "+x"(acc) : "x"(p));
    return acc;
}

// 16 columns of a tile's row (+ bias[j ..]) at yr; the first `cols` of them where the panel is the last, partial one
inline void store16(__m256 v0, __m256 v1, const float* bias, int j, int cols, float* yr) {
    if (cols == VISION_PANEL) {
        if (bias) v0 = _mm256_add_ps(v0, _mm256_loadu_ps(bias + j)), v1 = _mm256_add_ps(v1, _mm256_loadu_ps(bias + j + 8));
        _mm256_storeu_ps(yr, v0), _mm256_storeu_ps(yr + 8, v1);
        return;
    }
    alignas(32) float out[VISION_PANEL];
    _mm256_store_ps(out, v0), _mm256_store_ps(out + 8, v1);
    for (int c = 0; c < cols; ++c) yr[c] = bias ? out[c] + bias[j + c] : out[c];
}

// MR activation rows × one panel of 16 columns: two vectors of 8 columns, each k4 step one broadcast of 4 activation
// bytes per row into vpmaddubsw (u8 × s8 pairs: no saturation with 7-bit weights) and vpmaddwd.
template <int MR>
void i8_rows(const I8Panels& w, const ActU8& x, int i0, const float* bias, float* y, int ldy, int j, int cols) {
    const int k4 = k4_of(w.k);
    const int8_t* wp = w.q + size_t(j / VISION_PANEL) * k4 * VISION_PANEL * 4;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[MR][2];
    for (auto& r : acc) r[0] = r[1] = _mm256_setzero_si256();
    for (int t = 0; t < k4; ++t) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i*)(wp + size_t(t) * 64));
        const __m256i w1 = _mm256_loadu_si256((const __m256i*)(wp + size_t(t) * 64 + 32));
        for (int r = 0; r < MR; ++r) {
            int32_t four;
            std::memcpy(&four, x.q + (size_t(i0 + r) * k4 + t) * 4, 4);
            const __m256i a = _mm256_set1_epi32(four);
            acc[r][0] = add_acc(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(a, w0), ones));
            acc[r][1] = add_acc(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(a, w1), ones));
        }
    }
#pragma GCC unroll 8  // every index of acc a constant: the accumulators stay in registers
    for (int r = 0; r < MR; ++r) {
        const __m256 d = _mm256_set1_ps(x.d[i0 + r]);
        __m256 v[2];
        for (int h = 0; h < 2; ++h) {
            const __m256i zero = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)(w.sum + j + 8 * h)), 7);
            v[h] = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][h], zero)), d),
                                 _mm256_loadu_ps(w.scale + j + 8 * h));
        }
        store16(v[0], v[1], bias, j, cols, y + size_t(i0 + r) * ldy + j);
    }
}

void i8_gemm(const I8Panels& w, const ActU8& x, const float* bias, float* y, int ldy, int j0, int j1) {
    for (int j = j0; j < j1; j += VISION_PANEL) {
        const int cols = std::min(VISION_PANEL, j1 - j);
        int i = 0;
        for (; i + 4 <= x.m; i += 4) i8_rows<4>(w, x, i, bias, y, ldy, j, cols);
        for (; i < x.m; ++i) i8_rows<1>(w, x, i, bias, y, ldy, j, cols);
    }
}

// MR rows × one panel of 16 columns of fp32, 2·MR accumulators.
template <int MR>
void f32_rows(const F32Panels& w, const float* x, int ldx, int i0, const float* bias, float* y, int ldy, int j, int cols) {
    const float* wp = w.w + size_t(j / VISION_PANEL) * w.panel();
    __m256 acc[MR][2];
    for (auto& r : acc) r[0] = r[1] = _mm256_setzero_ps();
    for (int t = 0; t < w.k; ++t) {
        const __m256 w0 = _mm256_loadu_ps(wp + size_t(t) * VISION_PANEL), w1 = _mm256_loadu_ps(wp + size_t(t) * VISION_PANEL + 8);
        for (int r = 0; r < MR; ++r) {
            const __m256 a = _mm256_broadcast_ss(x + size_t(i0 + r) * ldx + t);
            acc[r][0] = fma_acc(acc[r][0], a, w0);
            acc[r][1] = fma_acc(acc[r][1], a, w1);
        }
    }
#pragma GCC unroll 8  // every index of acc a constant: the accumulators stay in registers
    for (int r = 0; r < MR; ++r) store16(acc[r][0], acc[r][1], bias, j, cols, y + size_t(i0 + r) * ldy + j);
}

void f32_gemm(const F32Panels& w, const float* x, int ldx, int m, const float* bias, float* y, int ldy, int j0, int j1) {
    for (int j = j0; j < j1; j += VISION_PANEL) {
        const int cols = std::min(VISION_PANEL, j1 - j);
        int i = 0;
        for (; i + 4 <= m; i += 4) f32_rows<4>(w, x, ldx, i, bias, y, ldy, j, cols);
        for (; i < m; ++i) f32_rows<1>(w, x, ldx, i, bias, y, ldy, j, cols);
    }
}

// the reference's float ops (a true division, round half to even), eight at a time: the same bits
void quantize_u8(const float* x, int ldx, int m, int k, uint8_t* q, float* d) {
    const int kp = k4_of(k) * 4;
    const __m256 sign = _mm256_set1_ps(-0.f), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
    for (int i = 0; i < m; ++i) {
        const float* xr = x + size_t(i) * ldx;
        __m256 top = _mm256_setzero_ps();
        int t = 0;
        for (; t + 8 <= k; t += 8) top = _mm256_max_ps(top, _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + t)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        for (; t < k; ++t) amax = std::max(amax, std::fabs(xr[t]));
        const float s = std::max(amax, 1e-8f) / 127.f;
        const __m256 sv = _mm256_set1_ps(s);
        uint8_t* qr = q + size_t(i) * kp;
        for (t = 0; t + 8 <= k; t += 8) {
            __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(xr + t), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m256i n = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi)), _mm256_set1_epi32(128));
            const __m128i p16 = _mm_packus_epi32(_mm256_castsi256_si128(n), _mm256_extracti128_si256(n, 1));
            _mm_storel_epi64((__m128i*)(qr + t), _mm_packus_epi16(p16, p16));
        }
        for (; t < k; ++t) qr[t] = uint8_t(std::min(std::max(std::nearbyint(xr[t] / s), -127.f), 127.f) + 128.f);
        for (; t < kp; ++t) qr[t] = 128;
        d[i] = s;
    }
}

void layer_norm(const float* x, int m, int k, const float* g, const float* b, float eps, float* y) {
    for (int i = 0; i < m; ++i) {
        const float* xr = x + size_t(i) * k;
        float* yr = y + size_t(i) * k;
        __m256 acc = _mm256_setzero_ps();
        int t = 0;
        for (; t + 8 <= k; t += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(xr + t));
        float sum = hsum(acc);
        for (; t < k; ++t) sum += xr[t];
        const float mean = sum / float(k);
        const __m256 mv = _mm256_set1_ps(mean);
        acc = _mm256_setzero_ps();
        for (t = 0; t + 8 <= k; t += 8) {
            const __m256 c = _mm256_sub_ps(_mm256_loadu_ps(xr + t), mv);
            acc = _mm256_fmadd_ps(c, c, acc);
        }
        float var = hsum(acc);
        for (; t < k; ++t) var += (xr[t] - mean) * (xr[t] - mean);
        const float inv = 1.f / std::sqrt(var / float(k) + eps);
        const __m256 iv = _mm256_set1_ps(inv);
        for (t = 0; t + 8 <= k; t += 8) {
            const __m256 c = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + t), mv), iv);
            _mm256_storeu_ps(yr + t, _mm256_fmadd_ps(c, _mm256_loadu_ps(g + t), _mm256_loadu_ps(b + t)));
        }
        for (; t < k; ++t) yr[t] = (xr[t] - mean) * inv * g[t] + b[t];
    }
}

// 0.5 · x · (1 + f(x)) with f = erf(x / √2) (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7) or tanh(√(2/π)(x + 0.044715x³)),
// or x · sigmoid(1.702x), or x · sigmoid(x); every exp of a non-positive argument.
inline __m256 gelu8(__m256 x, int kind) {
    const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
    const __m256 neg = _mm256_and_ps(x, sign), ax = _mm256_andnot_ps(sign, x);
    if (kind == GELU_QUICK || kind == SILU) {
        const __m256 e = exp_nonpositive(_mm256_mul_ps(ax, _mm256_set1_ps(kind == SILU ? -1.f : -1.702f)));
        const __m256 sig = _mm256_div_ps(_mm256_blendv_ps(one, e, neg), _mm256_add_ps(one, e));
        return _mm256_mul_ps(x, sig);
    }
    __m256 f;
    if (kind == GELU_TANH) {
        const __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.79788456f), _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), ax), _mm256_mul_ps(ax, ax), ax));
        const __m256 e = exp_nonpositive(_mm256_mul_ps(u, _mm256_set1_ps(-2.f)));
        f = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
    } else {
        const __m256 z = _mm256_mul_ps(ax, _mm256_set1_ps(0.70710678f));
        const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), z, one));
        __m256 p = _mm256_set1_ps(1.061405429f);
        for (float c : {-1.453152027f, 1.421413741f, -0.284496736f, 0.254829592f}) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c));
        p = _mm256_mul_ps(p, t);
        f = _mm256_fnmadd_ps(p, exp_nonpositive(_mm256_mul_ps(_mm256_mul_ps(z, z), _mm256_set1_ps(-1.f))), one);
    }
    f = _mm256_or_ps(f, neg);  // f is odd
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(one, f));
}

void gelu(float* x, size_t n, int kind) {
    size_t t = 0;
    for (; t + 8 <= n; t += 8) _mm256_storeu_ps(x + t, gelu8(_mm256_loadu_ps(x + t), kind));
    if (t < n) {
        alignas(32) float tail[8] = {};
        std::memcpy(tail, x + t, (n - t) * sizeof(float));
        _mm256_store_ps(tail, gelu8(_mm256_load_ps(tail), kind));
        std::memcpy(x + t, tail, (n - t) * sizeof(float));
    }
}

void softmax(float* s, int lds, int m, int n, float scale) {
    const __m256 sc = _mm256_set1_ps(scale);
    for (int i = 0; i < m; ++i) {
        float* r = s + size_t(i) * lds;
        float top = -INFINITY;
        for (int t = 0; t < n; ++t) top = std::max(top, r[t] * scale);
        const __m256 tv = _mm256_set1_ps(top);
        __m256 acc = _mm256_setzero_ps();
        int t = 0;
        for (; t + 8 <= n; t += 8) {
            const __m256 e = exp_nonpositive(_mm256_fmsub_ps(_mm256_loadu_ps(r + t), sc, tv));
            _mm256_storeu_ps(r + t, e);
            acc = _mm256_add_ps(acc, e);
        }
        float sum = hsum(acc);
        for (; t < n; ++t) sum += r[t] = std::exp(r[t] * scale - top);
        const __m256 inv = _mm256_set1_ps(1.f / sum);
        for (t = 0; t + 8 <= n; t += 8) _mm256_storeu_ps(r + t, _mm256_mul_ps(_mm256_loadu_ps(r + t), inv));
        for (; t < n; ++t) r[t] *= 1.f / sum;
    }
}

// vpmaddubsw + vpmaddwd + vpaddd (the int8 GEMM's three instructions per 32 products), or vfmadd231ps
double peak(bool int8, long n) {
    __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(5), ones = _mm256_set1_epi16(1), acc[12];
    __m256 fa = _mm256_set1_ps(1.0001f), fb = _mm256_set1_ps(0.9999f), facc[12];
    for (int r = 0; r < 12; ++r) acc[r] = _mm256_setzero_si256(), facc[r] = _mm256_setzero_ps();
    for (long i = 0; i < n; ++i) {
#pragma GCC unroll 12
        for (int r = 0; r < 12; ++r) {
            if (int8) acc[r] = add_acc(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
            else facc[r] = fma_acc(facc[r], fa, fb);
        }
        __asm__ volatile("" : "+x"(a), "+x"(fa));
    }
    alignas(32) int32_t out[8];
    for (int r = 1; r < 12; ++r) acc[0] = _mm256_add_epi32(acc[0], acc[r]), facc[0] = _mm256_add_ps(facc[0], facc[r]);
    _mm256_store_si256((__m256i*)out, acc[0]);
    volatile float sink = out[0] + hsum(facc[0]);
    (void)sink;
    return 12.0 * double(n) * (int8 ? 32 : 8);
}

}  // namespace

// F16C rounds to nearest even as float_to_fp16 does (its NaN: quiet, the top payload bits kept, as there)
void to_fp16(const float* x, size_t n, uint16_t* y) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; ++i) y[i] = float_to_fp16(x[i]);
}

void from_fp16(const uint16_t* x, size_t n, float* y) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(x + i))));
    for (; i < n; ++i) y[i] = fp16_to_float(x[i]);
}

const Kernels kAvx2 = {"avx2", q4_matmul, q8_matmul, f16_matmul, attend, attend_f16, attend_q8, q4_matmul_f32, quantize,
                       i8_gemm, f32_gemm, quantize_u8, layer_norm, gelu, softmax, peak, to_fp16, from_fp16};

}  // namespace vila
#endif

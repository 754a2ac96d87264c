// AVX-512 (F, BW, VL) kernels, included by avx512.cpp and, with VILA_VNNI, by avx512vnni.cpp
// (_mm512_dpbusd_epi32 in place of maddubs + madd): the integer matmuls. Two blocks of 32 per 512-bit vector.
// GCC 12 flags its own AVX-512 intrinsic headers (`__Y = __Y`) with false (maybe-)uninitialized warnings.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace vila {
namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

inline __m512i dot_u8s8(__m512i w, __m512i x) {
#ifdef VILA_VNNI
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
#else
    return _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), _mm512_set1_epi16(1));
#endif
}

// acc + the u8 × s8 products of w and x summed in fours, per int32 lane
inline __m512i dot_acc(__m512i acc, __m512i w, __m512i x) {
#ifdef VILA_VNNI
    // in place: GCC 12 copies the accumulator of _mm512_dpbusd_epi32 around it (two moves per product in a GEMM tile)
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x));
    return acc;
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), _mm512_set1_epi16(1)));
#endif
}

// [a × 8 | b × 8]: the per-block scales of a two-block product.
inline __m512 two_scales(float a, float b) { return _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(a), _mm512_set1_ps(b)); }

inline float zero_term(const uint16_t* s, const uint8_t* z, const float* X, int ng) {
    __m512 acc = _mm512_setzero_ps();
    int g = 0;
    for (; g + 16 <= ng; g += 16) {
        __m512 sv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(s + g)));
        __m512 zv = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(z + g))));
        acc = _mm512_fmadd_ps(_mm512_mul_ps(sv, zv), _mm512_loadu_ps(X + g), acc);
    }
    float r = _mm512_reduce_add_ps(acc);
    for (; g < ng; ++g) r += h2f(s[g]) * float(z[g]) * X[g];
    return r;
}

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
        __m512 acc[MT];
        for (int r = 0; r < MT; ++r) acc[r] = _mm512_setzero_ps();
        int b = 0;
        for (; b + 2 <= nb; b += 2) {
            _mm_prefetch((const char*)(ahead + b * 16), _MM_HINT_T0);
            __m256i v = _mm256_loadu_si256((const __m256i*)(wq + b * 16));
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);  // blocks b, b + 1 in order
            float s0 = h2f(ws[b >> gshift]), s1 = h2f(ws[(b + 1) >> gshift]);
            for (int r = 0; r < MT; ++r) {
                __m512i p = dot_u8s8(wv, _mm512_loadu_si512(xq[r] + b * QK));
                // groups of 64+ share the weight scale, and paired activation blocks share theirs
                const __m512 sc = gshift ? _mm512_set1_ps(s0 * xd[r][b]) : two_scales(s0 * xd[r][b], s1 * xd[r][b + 1]);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sc, acc[r]);
            }
        }
        if (b < nb) {  // odd last block: low nibbles only; the upper half of x is masked to zero
            __m256i lo = _mm256_and_si256(_mm256_loadu_si256((const __m256i*)(wq + b * 16)), m4);
            __m512i wv = _mm512_castsi256_si512(lo);
            wv = _mm512_inserti64x4(wv, _mm256_setzero_si256(), 1);
            float s0 = h2f(ws[b >> gshift]);
            for (int r = 0; r < MT; ++r) {
                __m512i xv = _mm512_maskz_loadu_epi8(0xffffffffull, xq[r] + b * QK);
                __m512i p = dot_u8s8(wv, xv);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(s0 * xd[r][b]), acc[r]);
            }
        }
        for (int r = 0; r < MT; ++r)
            y[size_t(i0 + r) * ldy + j] =
                _mm512_reduce_add_ps(acc[r]) - zero_term(ws, w.zeros + size_t(j) * ng, X + size_t(i0 + r) * ng, ng);
    }
}

// ---- prefill (PANEL_ROWS or more rows): a GEMM over panels of 16 output columns --------------------------------
// The 16 weight rows of a panel are gathered once per call so that each 512-bit vector holds 4 consecutive k of every
// column (column c in dword c): one u8 × s8 dot product with 4 activation bytes broadcast feeds 16 columns, the
// integer sums of a block stay int32 until its scales are applied as 16-wide vectors, and no horizontal sum is left.
// Every row's arithmetic is the same whatever the row tile, so results do not depend on how a prefill is chunked
// (as long as each chunk has PANEL_ROWS rows or more: fewer take q4_tile).
constexpr int PANEL = 16;

using Panel = Q4Panel<PANEL>;

void pack_panel(const Q4Weight& w, int j0, int cols, Panel& p) {
    const int pairs = (w.k / QK + 1) / 2;
    const size_t row_bytes = q4_row_bytes(w.k);
    alignas(64) int32_t offsets[PANEL];
    for (int c = 0; c < PANEL; ++c) offsets[c] = int32_t(std::min(c, cols - 1) * row_bytes);  // spare lanes: any column
    const __m512i idx = _mm512_load_si512(offsets);
    const uint8_t* base = w.q + size_t(j0) * row_bytes;
    p.q.resize(size_t(pairs) * 8 * PANEL);
    for (int pr = 0; pr < pairs; ++pr)
        for (int t = 0; t < 8; ++t)
            _mm512_storeu_si512(p.q.data() + (size_t(pr) * 8 + t) * PANEL, _mm512_i32gather_epi32(idx, base + pr * 32 + 4 * t, 1));
    panel_scales<PANEL>(w, j0, cols, p.s, p.sz, h2f);
}

inline __m512i broadcast4(const int8_t* x) {
    int32_t v;
    std::memcpy(&v, x, 4);
    return _mm512_set1_epi32(v);
}

// Rows i0 .. i0 + MT - 1 against a panel: y = Σ_b s_b · d_b · Σ_k q x  -  Σ_g s_g · z_g · X_g, 16 columns at once.
template <int MT>
void panel_rows(const Panel& p, const ActQ8& x, int i0, const float* X, int ng, float* y, int ldy, int j0, int cols) {
    const int nb = x.k / QK;
    const __m512i m4 = _mm512_set1_epi8(15);
    const int8_t* xq[MT];
    const float* xd[MT];
    for (int r = 0; r < MT; ++r) xq[r] = x.q + size_t(i0 + r) * x.k, xd[r] = x.d + size_t(i0 + r) * nb;
    __m512 acc[MT];
    for (auto& a : acc) a = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += 2) {
        const uint32_t* v = p.q.data() + size_t(b / 2) * 8 * PANEL;
        const bool two = b + 1 < nb;
        __m512i lo[MT], hi[MT];
        for (int r = 0; r < MT; ++r) lo[r] = hi[r] = _mm512_setzero_si512();
        for (int t = 0; t < 8; ++t) {
            const __m512i vt = _mm512_loadu_si512(v + t * PANEL);
            const __m512i wlo = _mm512_and_si512(vt, m4), whi = _mm512_and_si512(_mm512_srli_epi16(vt, 4), m4);
            for (int r = 0; r < MT; ++r) {
                lo[r] = dot_acc(lo[r], wlo, broadcast4(xq[r] + b * QK + 4 * t));
                if (two) hi[r] = dot_acc(hi[r], whi, broadcast4(xq[r] + (b + 1) * QK + 4 * t));
            }
        }
        const __m512 s0 = _mm512_loadu_ps(p.s.data() + size_t(b) * PANEL);
        for (int r = 0; r < MT; ++r)
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo[r]), _mm512_mul_ps(s0, _mm512_set1_ps(xd[r][b])), acc[r]);
        if (two) {
            const __m512 s1 = _mm512_loadu_ps(p.s.data() + size_t(b + 1) * PANEL);
            for (int r = 0; r < MT; ++r)
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi[r]), _mm512_mul_ps(s1, _mm512_set1_ps(xd[r][b + 1])), acc[r]);
        }
    }
    const __mmask16 keep = __mmask16((1u << cols) - 1);
    for (int r = 0; r < MT; ++r) {
        for (int g = 0; g < ng; ++g)
            acc[r] = _mm512_fnmadd_ps(_mm512_set1_ps(X[size_t(i0 + r) * ng + g]), _mm512_loadu_ps(p.sz.data() + size_t(g) * PANEL), acc[r]);
        _mm512_mask_storeu_ps(y + size_t(i0 + r) * ldy + j0, keep, acc[r]);
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

// int8 × int8 through the u8 × s8 instruction: |w| and x with w's sign.
template <int MT>
void q8_tile(const Q8Weight& w, const ActQ8& x, int i0, float* y, int ldy, int j0, int j1) {
    const int nb = w.k / QK;
    for (int j = j0; j < j1; ++j) {
        const int8_t* wq = w.q + size_t(j) * w.k;
        const int8_t* ahead = j + PREFETCH_ROWS < w.n ? wq + PREFETCH_ROWS * size_t(w.k) : wq;  // within the weight
        const uint16_t* ws = w.scales + size_t(j) * nb;
        __m512 acc[MT];
        for (int r = 0; r < MT; ++r) acc[r] = _mm512_setzero_ps();
        int b = 0;
        for (; b + 2 <= nb; b += 2) {
            _mm_prefetch((const char*)(ahead + b * QK), _MM_HINT_T0);
            __m512i v = _mm512_loadu_si512(wq + b * QK);
            __m512i av = _mm512_abs_epi8(v);
            __mmask64 neg = _mm512_movepi8_mask(v);
            float s0 = h2f(ws[b]), s1 = h2f(ws[b + 1]);
            for (int r = 0; r < MT; ++r) {
                const float* xd = x.d + size_t(i0 + r) * nb;
                __m512i xv = _mm512_loadu_si512(x.q + size_t(i0 + r) * w.k + b * QK);
                xv = _mm512_mask_sub_epi8(xv, neg, _mm512_setzero_si512(), xv);
                __m512i p = dot_u8s8(av, xv);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), two_scales(s0 * xd[b], s1 * xd[b + 1]), acc[r]);
            }
        }
        float tail[MT] = {};
        for (; b < nb; ++b) {
            const float s = h2f(ws[b]);
            for (int r = 0; r < MT; ++r) {
                const int8_t* xr = x.q + size_t(i0 + r) * w.k + b * QK;
                int isum = 0;
                for (int t = 0; t < QK; ++t) isum += wq[b * QK + t] * xr[t];
                tail[r] += s * x.d[size_t(i0 + r) * nb + b] * float(isum);
            }
        }
        for (int r = 0; r < MT; ++r) y[size_t(i0 + r) * ldy + j] = _mm512_reduce_add_ps(acc[r]) + tail[r];
    }
}

void q8_matmul(const Q8Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1) {
    int i = 0;
    for (; i + 4 <= x.m; i += 4) q8_tile<4>(w, x, i, y, ldy, j0, j1);
    for (; i < x.m; ++i) q8_tile<1>(w, x, i, y, ldy, j0, j1);
}

// ---- the vision tower: MR activation rows × NP panels of 16 columns; each k4 step one vector of weights per panel and
// 4 activation bytes broadcast per row (u8 × s8 with vpdpbusd, or vpmaddubsw + vpmaddwd without VNNI)
template <int MR, int NP>
void i8_rows(const I8Panels& w, const ActU8& x, int i0, const float* bias, float* y, int ldy, int j, int j1) {
    const int k4 = k4_of(w.k);
    const int8_t* wp = w.q + size_t(j / VISION_PANEL) * k4 * 64;
    __m512i acc[MR][NP];
    for (auto& r : acc)
        for (auto& a : r) a = _mm512_setzero_si512();
    for (int t = 0; t < k4; ++t) {
        __m512i wv[NP];
        for (int p = 0; p < NP; ++p) wv[p] = _mm512_loadu_si512(wp + (size_t(p) * k4 + t) * 64);
        for (int r = 0; r < MR; ++r) {
            int32_t four;
            std::memcpy(&four, x.q + (size_t(i0 + r) * k4 + t) * 4, 4);
            const __m512i a = _mm512_set1_epi32(four);
            for (int p = 0; p < NP; ++p) acc[r][p] = dot_acc(acc[r][p], a, wv[p]);
        }
    }
    for (int p = 0; p < NP; ++p) {
        const int jp = j + p * VISION_PANEL, cols = std::min(VISION_PANEL, j1 - jp);
        const __mmask16 keep = cols >= 16 ? 0xffff : __mmask16((1u << cols) - 1);
        const __m512i zero = _mm512_slli_epi32(_mm512_loadu_si512(w.sum + jp), 7);
        const __m512 scale = _mm512_loadu_ps(w.scale + jp);
        const __m512 b = bias ? _mm512_maskz_loadu_ps(keep, bias + jp) : _mm512_setzero_ps();
        for (int r = 0; r < MR; ++r) {
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][p], zero)), _mm512_set1_ps(x.d[i0 + r]));
            _mm512_mask_storeu_ps(y + size_t(i0 + r) * ldy + jp, keep, _mm512_add_ps(_mm512_mul_ps(v, scale), b));
        }
    }
}

// the row tiles of MR ≤ 8 rows over one or two panels: every row is the same arithmetic whatever its tile
template <int NP, class Rows>
void row_tiles(int m, Rows rows) {
    int i = 0;
    for (; i + 8 <= m; i += 8) rows(std::integral_constant<int, 8>{}, std::integral_constant<int, NP>{}, i);
    switch (m - i) {
        case 7: rows(std::integral_constant<int, 7>{}, std::integral_constant<int, NP>{}, i); break;
        case 6: rows(std::integral_constant<int, 6>{}, std::integral_constant<int, NP>{}, i); break;
        case 5: rows(std::integral_constant<int, 5>{}, std::integral_constant<int, NP>{}, i); break;
        case 4: rows(std::integral_constant<int, 4>{}, std::integral_constant<int, NP>{}, i); break;
        case 3: rows(std::integral_constant<int, 3>{}, std::integral_constant<int, NP>{}, i); break;
        case 2: rows(std::integral_constant<int, 2>{}, std::integral_constant<int, NP>{}, i); break;
        case 1: rows(std::integral_constant<int, 1>{}, std::integral_constant<int, NP>{}, i); break;
    }
}

// pairs of panels (the weights of 32 columns stay in L1 while every row tile passes), a last single one
template <class Rows>
void panel_pairs(int m, int j0, int j1, Rows rows) {
    for (int j = j0; j < j1; j += 2 * VISION_PANEL) {
        if (j1 - j > VISION_PANEL) row_tiles<2>(m, [&](auto mr, auto np, int i) { rows(mr, np, i, j); });
        else row_tiles<1>(m, [&](auto mr, auto np, int i) { rows(mr, np, i, j); });
    }
}

// acc += a · w in place (GCC 12 copies the accumulators of _mm512_fmadd_ps around each product in a tile, as dot_acc's)
inline __m512 fma_acc(__m512 acc, __m512 a, __m512 w) {
    __asm__("vfmadd231ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w));
    return acc;
}

// the int8 GEMM's dot instruction (vpdpbusd, or vpmaddubsw + vpmaddwd + vpaddd), or vfmadd231ps without VNNI
double peak(bool int8, long n) {
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5), acc[12];
    for (auto& r : acc) r = _mm512_setzero_si512();
    if (!int8) {
        __m512 fa = _mm512_set1_ps(1.0001f), fb = _mm512_set1_ps(0.9999f), facc[12];
        for (auto& r : facc) r = _mm512_setzero_ps();
        for (long i = 0; i < n; ++i) {
#pragma GCC unroll 12
            for (int r = 0; r < 12; ++r) facc[r] = fma_acc(facc[r], fa, fb);
            __asm__ volatile("" : "+v"(fa));
        }
        volatile float sink = 0;
        for (auto& r : facc) sink = sink + _mm512_reduce_add_ps(r);
        return 12.0 * double(n) * 16;
    }
    for (long i = 0; i < n; ++i) {
#pragma GCC unroll 12
        for (int r = 0; r < 12; ++r) acc[r] = dot_acc(acc[r], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    volatile int32_t sink = 0;
    for (auto& r : acc) sink = sink + _mm512_reduce_add_epi32(r);
    return 12.0 * double(n) * 64;
}

void i8_gemm(const I8Panels& w, const ActU8& x, const float* bias, float* y, int ldy, int j0, int j1) {
    panel_pairs(x.m, j0, j1, [&](auto mr, auto np, int i, int j) { i8_rows<decltype(mr)::value, decltype(np)::value>(w, x, i, bias, y, ldy, j, j1); });
}

#ifndef VILA_VNNI  // VNNI has nothing to add to the float GEMM: its table takes AVX-512's
template <int MR, int NP>
void f32_rows(const F32Panels& w, const float* x, int ldx, int i0, const float* bias, float* y, int ldy, int j, int j1) {
    const float* wp = w.w + size_t(j / VISION_PANEL) * w.panel();
    __m512 acc[MR][NP];
    for (auto& r : acc)
        for (auto& a : r) a = _mm512_setzero_ps();
    for (int t = 0; t < w.k; ++t) {
        __m512 wv[NP];
        for (int p = 0; p < NP; ++p) wv[p] = _mm512_loadu_ps(wp + size_t(p) * w.panel() + size_t(t) * VISION_PANEL);
        for (int r = 0; r < MR; ++r) {
            const __m512 a = _mm512_set1_ps(x[size_t(i0 + r) * ldx + t]);
            for (int p = 0; p < NP; ++p) acc[r][p] = fma_acc(acc[r][p], a, wv[p]);
        }
    }
    for (int p = 0; p < NP; ++p) {
        const int jp = j + p * VISION_PANEL, cols = std::min(VISION_PANEL, j1 - jp);
        const __mmask16 keep = cols >= 16 ? 0xffff : __mmask16((1u << cols) - 1);
        const __m512 b = bias ? _mm512_maskz_loadu_ps(keep, bias + jp) : _mm512_setzero_ps();
        for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(y + size_t(i0 + r) * ldy + jp, keep, _mm512_add_ps(acc[r][p], b));
    }
}

// e^x for x <= 0: avx2.cpp's Cephes polynomial, sixteen at a time (2^n by vscalefps)
inline __m512 exp_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

// attention's softmax, sixteen scores at a time (the tail masked)
void softmax(float* s, int lds, int m, int n, float scale) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (int i = 0; i < m; ++i) {
        float* r = s + size_t(i) * lds;
        __m512 top = _mm512_set1_ps(-INFINITY), acc = _mm512_setzero_ps();
        for (int t = 0; t < n; t += 16) {
            const __mmask16 k = n - t >= 16 ? 0xffff : __mmask16((1u << (n - t)) - 1);
            top = _mm512_mask_max_ps(top, k, top, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, r + t), sc));
        }
        const __m512 tv = _mm512_set1_ps(_mm512_reduce_max_ps(top));
        for (int t = 0; t < n; t += 16) {
            const __mmask16 k = n - t >= 16 ? 0xffff : __mmask16((1u << (n - t)) - 1);
            const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, r + t), sc), tv));
            _mm512_mask_storeu_ps(r + t, k, e);
            acc = _mm512_mask_add_ps(acc, k, acc, e);
        }
        const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(acc));
        for (int t = 0; t < n; t += 16) {
            const __mmask16 k = n - t >= 16 ? 0xffff : __mmask16((1u << (n - t)) - 1);
            _mm512_mask_storeu_ps(r + t, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, r + t), inv));
        }
    }
}

void f32_gemm(const F32Panels& w, const float* x, int ldx, int m, const float* bias, float* y, int ldy, int j0, int j1) {
    panel_pairs(m, j0, j1, [&](auto mr, auto np, int i, int j) { f32_rows<decltype(mr)::value, decltype(np)::value>(w, x, ldx, i, bias, y, ldy, j, j1); });
}
#endif

}  // namespace
}  // namespace vila

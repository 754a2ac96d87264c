// Portable kernels: the reference every SIMD table is tested against, and the fallback.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace vila {

float fp16_to_float(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {  // subnormal: renormalise
        int e = -1;
        do { ++e; mant <<= 1; } while (!(mant & 0x400));
        bits = sign | uint32_t(112 - e) << 23 | ((mant & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t float_to_fp16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = uint16_t(x >> 16 & 0x8000);
    const uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) return sign | 0x7e00 | uint16_t(ax >> 13 & 0x3ff);  // NaN, kept quiet
    if (ax >= 0x477ff000) return sign | 0x7c00;  // 65520 and up (inf included) round to inf
    if (ax < 0x38800000)  // below 2^-14: a subnormal half in steps of 2^-24, exact to scale, rounded to even
        return sign | uint16_t(std::nearbyint(std::fabs(f) * 16777216.f));
    uint32_t h = (ax - 0x38000000) >> 13;  // the exponent rebiased (127 -> 15), the top 10 mantissa bits
    const uint32_t rest = ax & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // a carry into the exponent is still right
    return sign | uint16_t(h);
}

void quantize_kv_q8(const float* x, int hd, int8_t* q, uint16_t* d) {
    for (int b = 0; b < hd / QK; ++b) {
        const float* xb = x + b * QK;
        float amax = 0.f;
        for (int t = 0; t < QK; ++t) amax = std::fmax(amax, std::fabs(xb[t]));
        const float s = amax / 127.f, inv = s != 0.f ? 1.f / s : 0.f;
        d[b] = float_to_fp16(s);
        for (int t = 0; t < QK; ++t) q[b * QK + t] = int8_t(std::round(xb[t] * inv));
    }
}

void quantize_act(const float* x, int m, int k, int8_t* q, float* d, float* sum) {
    const int nb = k / QK;
    for (int i = 0; i < m; ++i)
        for (int b = 0; b < nb; b += 2) {
            const int span = b + 1 < nb ? 2 * QK : QK;  // pairs of blocks share one scale
            const float* xb = x + size_t(i) * k + b * QK;
            float amax = 0.f;
            for (int t = 0; t < span; ++t) amax = std::fmax(amax, std::fabs(xb[t]));
            const float scale = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
            for (int h = 0; h < span / QK; ++h) {
                int s = 0;
                for (int t = h * QK; t < (h + 1) * QK; ++t) {
                    const int v = int(std::nearbyint(xb[t] * inv));
                    q[size_t(i) * k + b * QK + t] = int8_t(v);
                    s += v;
                }
                d[size_t(i) * nb + b + h] = scale;
                sum[size_t(i) * nb + b + h] = scale * float(s);
            }
        }
}

static void q4_matmul(const Q4Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1) {
    const int nb = w.k / QK, ng = w.k / w.group, bpg = w.group / QK;
    for (int i = 0; i < x.m; ++i) {
        const int8_t* xq = x.q + size_t(i) * w.k;
        const float *xd = x.d + size_t(i) * nb, *xs = x.sum + size_t(i) * nb;
        for (int j = j0; j < j1; ++j) {
            const uint8_t* wq = w.q + size_t(j) * q4_row_bytes(w.k);
            float acc = 0.f;
            for (int b = 0; b < nb; ++b) {
                const uint8_t* pair = wq + b / 2 * 32;
                const int shift = b % 2 * 4;
                int isum = 0;
                for (int t = 0; t < QK; ++t) isum += (pair[t] >> shift & 15) * xq[b * QK + t];
                const int g = b / bpg;
                const float s = fp16_to_float(w.scales[size_t(j) * ng + g]), z = w.zeros[size_t(j) * ng + g];
                acc += s * (xd[b] * float(isum) - z * xs[b]);
            }
            y[size_t(i) * ldy + j] = acc;
        }
    }
}

static void q8_matmul(const Q8Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1) {
    const int nb = w.k / QK;
    for (int i = 0; i < x.m; ++i) {
        const int8_t* xq = x.q + size_t(i) * w.k;
        const float* xd = x.d + size_t(i) * nb;
        for (int j = j0; j < j1; ++j) {
            const int8_t* wq = w.q + size_t(j) * w.k;
            float acc = 0.f;
            for (int b = 0; b < nb; ++b) {
                int isum = 0;
                for (int t = 0; t < QK; ++t) isum += wq[b * QK + t] * xq[b * QK + t];
                acc += fp16_to_float(w.scales[size_t(j) * nb + b]) * xd[b] * float(isum);
            }
            y[size_t(i) * ldy + j] = acc;
        }
    }
}

static void f16_matmul(const F16Weight& w, const float* x, int m, float* y, int ldy, int j0, int j1) {
    for (int i = 0; i < m; ++i)
        for (int j = j0; j < j1; ++j) {
            const uint16_t* wr = w.w + size_t(j) * w.k;
            const float* xr = x + size_t(i) * w.k;
            float acc = 0.f;
            for (int t = 0; t < w.k; ++t) acc += fp16_to_float(wr[t]) * xr[t];
            y[size_t(i) * ldy + j] = acc;
        }
}

// Eight partial sums: a reduction the compiler may vectorise without reassociating floats itself.
static float dot(const float* a, const float* b, int n) {
    float acc[8] = {};
    int t = 0;
    for (; t + 8 <= n; t += 8)
        for (int l = 0; l < 8; ++l) acc[l] += a[t + l] * b[t + l];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; t < n; ++t) s += a[t] * b[t];
    return s;
}

void attend_ref(const float* q, const float* k, const float* v, int n, int hd, float scale, float* p, float* out) {
    float mx = -INFINITY, sum = 0.f;
    for (int t = 0; t < n; ++t) mx = std::fmax(mx, p[t] = dot(q, k + size_t(t) * hd, hd) * scale);
    for (int t = 0; t < n; ++t) sum += p[t] = std::exp(p[t] - mx);
    std::fill(out, out + hd, 0.f);
    for (int t = 0; t < n; ++t) {
        const float w = p[t] / sum;
        for (int d = 0; d < hd; ++d) out[d] += w * v[size_t(t) * hd + d];
    }
}

// attend_ref over rows dequantised one at a time: row(t, which, buf) writes key (which 0) or value (1) t.
template <class Row>
static void attend_rows(const float* q, int n, int hd, float scale, float* p, float* out, Row row) {
    thread_local std::vector<float> buf;
    buf.resize(hd);
    float mx = -INFINITY, sum = 0.f;
    for (int t = 0; t < n; ++t) {
        row(t, 0, buf.data());
        mx = std::fmax(mx, p[t] = dot(q, buf.data(), hd) * scale);
    }
    for (int t = 0; t < n; ++t) sum += p[t] = std::exp(p[t] - mx);
    std::fill(out, out + hd, 0.f);
    for (int t = 0; t < n; ++t) {
        row(t, 1, buf.data());
        const float w = p[t] / sum;
        for (int d = 0; d < hd; ++d) out[d] += w * buf[d];
    }
}

void attend_f16_ref(const float* q, const uint16_t* k, const uint16_t* v, int n, int hd, float scale, float* p, float* out) {
    attend_rows(q, n, hd, scale, p, out, [&](int t, int which, float* row) {
        const uint16_t* x = (which ? v : k) + size_t(t) * hd;
        for (int d = 0; d < hd; ++d) row[d] = fp16_to_float(x[d]);
    });
}

void attend_q8_ref(const float* q, KvQ8 k, KvQ8 v, int n, int hd, float scale, float* p, float* out) {
    const int nb = hd / QK;
    attend_rows(q, n, hd, scale, p, out, [&](int t, int which, float* row) {
        const KvQ8& c = which ? v : k;
        for (int d = 0; d < hd; ++d) row[d] = fp16_to_float(c.d[size_t(t) * nb + d / QK]) * float(c.q[size_t(t) * hd + d]);
    });
}

void q4_matmul_f32_ref(const Q4Weight& w, const float* x, int m, float* y, int ldy, int j0, int j1) {
    const int ng = w.k / w.group;
    for (int i = 0; i < m; ++i) {
        const float* xr = x + size_t(i) * w.k;
        for (int j = j0; j < j1; ++j) {
            const uint8_t* wq = w.q + size_t(j) * q4_row_bytes(w.k);
            float acc = 0.f;
            for (int t = 0; t < w.k; ++t) {
                const int g = size_t(j) * ng + t / w.group;
                const int q = wq[t / 64 * 32 + t % 32] >> (t % 64 / 32 * 4) & 15;
                acc += fp16_to_float(w.scales[g]) * float(q - w.zeros[g]) * xr[t];
            }
            y[size_t(i) * ldy + j] = acc;
        }
    }
}

// ---- the vision tower ------------------------------------------------------------------------------------------

void pack_i8_panels(const int8_t* src, size_t sj, size_t st, int n, int k, int8_t* q, int32_t* sum) {
    const int k4 = k4_of(k);
    std::memset(q, 0, i8_panels_bytes(n, k));
    std::fill(sum, sum + n16_of(n), 0);
    for (int t = 0; t < k; ++t)  // t outer: a [k, n] source (sj = 1) is read in order
        for (int j = 0; j < n; ++j) {
            const int8_t v = src[size_t(j) * sj + size_t(t) * st];
            q[((size_t(j / VISION_PANEL) * k4 + t / 4) * VISION_PANEL + j % VISION_PANEL) * 4 + t % 4] = v;
            sum[j] += v;
        }
}

void pack_f32_panels(const float* src, size_t sj, size_t st, int n, int k, float* w) {
    std::memset(w, 0, f32_panels_floats(n, k) * sizeof(float));
    auto at = [&](int j, int t) -> float& { return w[(size_t(j / VISION_PANEL) * k + t) * VISION_PANEL + j % VISION_PANEL]; };
    if (st == 1) {  // rows of the source are the output columns (attention's keys): read each in order
        for (int j = 0; j < n; ++j)
            for (int t = 0; t < k; ++t) at(j, t) = src[size_t(j) * sj + t];
    } else {  // a [k, n] source (weights, attention's values): its rows are panel rows already, 16 floats at a time
        for (int t = 0; t < k; ++t)
            for (int j = 0; j < n; ++j) at(j, t) = src[size_t(j) * sj + size_t(t) * st];
    }
}

namespace {

void i8_gemm(const I8Panels& w, const ActU8& x, const float* bias, float* y, int ldy, int j0, int j1) {
    const int k4 = k4_of(w.k);
    for (int i = 0; i < x.m; ++i) {
        const uint8_t* xr = x.q + size_t(i) * k4 * 4;
        for (int j = j0; j < j1; ++j) {
            const int8_t* wp = w.q + size_t(j / VISION_PANEL) * k4 * VISION_PANEL * 4 + j % VISION_PANEL * 4;
            int32_t acc = 0;
            for (int t = 0; t < k4 * 4; ++t) acc += int32_t(xr[t]) * wp[t / 4 * VISION_PANEL * 4 + t % 4];
            // ONNX Runtime's order: the int32 product to float, times the row's scale, times the column's, plus the bias
            const float v = float(acc - 128 * w.sum[j]) * x.d[i] * w.scale[j];
            y[size_t(i) * ldy + j] = bias ? v + bias[j] : v;
        }
    }
}

void f32_gemm(const F32Panels& w, const float* x, int ldx, int m, const float* bias, float* y, int ldy, int j0, int j1) {
    for (int i = 0; i < m; ++i)
        for (int j = j0; j < j1; ++j) {
            const float* wp = w.w + size_t(j / VISION_PANEL) * w.panel() + j % VISION_PANEL;
            float acc = 0.f;
            for (int t = 0; t < w.k; ++t) acc += x[size_t(i) * ldx + t] * wp[size_t(t) * VISION_PANEL];
            y[size_t(i) * ldy + j] = bias ? acc + bias[j] : acc;
        }
}

void quantize_u8(const float* x, int ldx, int m, int k, uint8_t* q, float* d) {
    const int kp = k4_of(k) * 4;
    for (int i = 0; i < m; ++i) {
        const float* xr = x + size_t(i) * ldx;
        float amax = 0.f;
        for (int t = 0; t < k; ++t) amax = std::max(amax, std::fabs(xr[t]));
        const float s = std::max(amax, 1e-8f) / 127.f;
        uint8_t* qr = q + size_t(i) * kp;
        for (int t = 0; t < k; ++t) qr[t] = uint8_t(std::min(std::max(std::nearbyint(xr[t] / s), -127.f), 127.f) + 128.f);
        for (int t = k; t < kp; ++t) qr[t] = 128;
        d[i] = s;
    }
}

void layer_norm(const float* x, int m, int k, const float* g, const float* b, float eps, float* y) {
    for (int i = 0; i < m; ++i) {
        const float* xr = x + size_t(i) * k;
        float mean = 0.f, var = 0.f;
        for (int t = 0; t < k; ++t) mean += xr[t];
        mean /= float(k);
        for (int t = 0; t < k; ++t) var += (xr[t] - mean) * (xr[t] - mean);
        const float inv = 1.f / std::sqrt(var / float(k) + eps);
        for (int t = 0; t < k; ++t) y[size_t(i) * k + t] = (xr[t] - mean) * inv * g[t] + b[t];
    }
}

void gelu(float* x, size_t n, int kind) {
    for (size_t t = 0; t < n; ++t) {
        const float v = x[t];
        if (kind == GELU_ERF) x[t] = 0.5f * v * (1.f + std::erf(v * 0.70710678f));
        else if (kind == GELU_TANH) x[t] = 0.5f * v * (1.f + std::tanh(0.79788456f * (v + 0.044715f * v * v * v)));
        else x[t] = v / (1.f + std::exp((kind == SILU ? -1.f : -1.702f) * v));
    }
}

void softmax(float* s, int lds, int m, int n, float scale) {
    for (int i = 0; i < m; ++i) {
        float* r = s + size_t(i) * lds;
        float top = -INFINITY, sum = 0.f;
        for (int t = 0; t < n; ++t) top = std::max(top, r[t] * scale);
        for (int t = 0; t < n; ++t) sum += r[t] = std::exp(r[t] * scale - top);
        for (int t = 0; t < n; ++t) r[t] /= sum;
    }
}

double peak(bool int8, long n) {  // scalar: what the portable kernels can reach at best
    int32_t ia[12] = {}, ib = 3, ic = 5;
    float fa[12] = {}, fb = 1.0001f, fc = 0.9999f;
    for (long i = 0; i < n; ++i) {
        for (int r = 0; r < 12; ++r) int8 ? void(ia[r] += ib * ic) : void(fa[r] = fa[r] * fb + fc);
        __asm__ volatile("" : "+r"(ib), "+x"(fb));  // no hoisting of the products out of the loop
    }
    volatile int32_t sink = 0;
    volatile float fsink = 0;
    for (int r = 0; r < 12; ++r) sink = sink + ia[r], fsink = fsink + fa[r];
    return 12.0 * double(n);
}

}  // namespace

static void to_fp16(const float* x, size_t n, uint16_t* y) {
    for (size_t i = 0; i < n; ++i) y[i] = float_to_fp16(x[i]);
}

static void from_fp16(const uint16_t* x, size_t n, float* y) {
    for (size_t i = 0; i < n; ++i) y[i] = fp16_to_float(x[i]);
}

const Kernels kRef = {"ref", q4_matmul, q8_matmul, f16_matmul, attend_ref, attend_f16_ref, attend_q8_ref, q4_matmul_f32_ref,
                      quantize_act, i8_gemm, f32_gemm, quantize_u8, layer_norm, gelu, softmax, peak, to_fp16, from_fp16};

}  // namespace vila

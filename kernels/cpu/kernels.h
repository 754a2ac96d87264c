// The CPU kernels' contract: weight formats, the int8 activation format, and one table of
// function pointers per instruction set (ref, avx2, avx512, avx512vnni, neon, neon-dotprod).
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace vila {

constexpr int QK = 32;  // activation block: int8 values sharing one float scale
// A matmul of this many activation rows or more is a GEMM (prefill); fewer take the row-at-a-time kernels (decode).
// The engine never gives a prefill chunk fewer rows than this unless the whole prefill is shorter, so each row's
// arithmetic does not depend on where a chunk starts.
constexpr int PANEL_ROWS = 4;

// Int4 weight [n, k] in groups of `group` along k (32, 64 or 128): w = scale * (q - zero).
// q: n rows of q4_row_bytes(k); each 32 bytes hold 64 weights: byte j has weight j in its low
// nibble and weight 32 + j in its high nibble, so one AND and one shift give two blocks in order.
// An odd last block of 32 leaves its high nibbles zero.
struct Q4Weight {
    const uint8_t* q;
    const uint16_t* scales;  // fp16 [n, k / group]
    const uint8_t* zeros;    // [n, k / group], 0..15
    int n, k, group;
};

// Bytes per row of Q4Weight::q: 32 per 64 weights, k rounded up to a multiple of 64.
inline size_t q4_row_bytes(int k) { return size_t(k + 63) / 64 * 32; }

// Int8 weight [n, k]: w = scale * q, one fp16 scale per block of QK.
struct Q8Weight {
    const int8_t* q;
    const uint16_t* scales;  // fp16 [n, k / QK]
    int n, k;
};

// fp16 weight [n, k], used with float activations.
struct F16Weight {
    const uint16_t* w;
    int n, k;
};

// A KV cache row stored as int8 blocks of QK along head_dim, one fp16 scale each (llama.cpp's q8_0):
// x ≈ fp16(d) · q, with d = amax / 127 and q = round(x / d), halves away from zero (quantize_kv_q8).
// Row t of n: its hd values at q + t·hd, its hd / QK scales at d + t·hd / QK.
struct KvQ8 {
    const int8_t* q;
    const uint16_t* d;
};

// m rows of k activations as int8 blocks (k a multiple of QK): x ≈ d * q; sum = d * Σq (for the
// weight's zero term). Blocks 2i and 2i + 1 share one scale (d is still stored per block), so a
// kernel may add their int16 products before widening when the weight scale is shared too.
struct ActQ8 {
    const int8_t* q;   // [m, k]
    const float* d;    // [m, k / QK]
    const float* sum;  // [m, k / QK]
    int m, k;
};

// ---- the vision tower's W8A8 (per-token dynamic int8, as quant/dynamic_int8.py writes it) and its float parts ----
constexpr int VISION_PANEL = 16;  // output columns per packed panel of the vision GEMMs (one AVX-512 vector, two AVX2 ones)

// Int8 weight [n, k] per output channel, w = scale · q with |q| ≤ 63 (7 bits: u8 × s8 pairs then cannot saturate the
// int16 sums of AVX2's vpmaddubsw), packed by pack_i8_panels: panel p, for each 4 consecutive k, the 4 bytes of
// columns 16p .. 16p + 15 in turn ([k4][16][4]), so one vector of weights meets 4 activation bytes broadcast.
// k is padded to k4 · 4 and n to a multiple of VISION_PANEL with zero weights.
struct I8Panels {
    const int8_t* q;     // [n16 / VISION_PANEL][k4][VISION_PANEL][4]
    const float* scale;  // [n16]
    const int32_t* sum;  // [n16]: Σ_k q, for the activations' offset of 128
    int n, k;
};
inline int k4_of(int k) { return (k + 3) / 4; }
inline int n16_of(int n) { return (n + VISION_PANEL - 1) / VISION_PANEL * VISION_PANEL; }

// Activation rows quantized per token, stored offset by 128 (the u8 operand of u8 × s8): x ≈ d · (q − 128).
// Each row has k4_of(k) · 4 bytes, the padding 128 (zero).
struct ActU8 {
    const uint8_t* q;
    const float* d;  // [m]
    int m, k;
};

// fp32 weight [n, k] packed by pack_f32_panels: [n16 / VISION_PANEL][k][VISION_PANEL], padded columns zero. Also the keys and
// values of attention: S = Q·Kᵀ takes K's rows as the n columns, O = P·V takes V's columns.
struct F32Panels {
    const float* w;
    int n, k;     // a GEMM reads k rows of each panel ...
    int rows = 0;  // ... of `rows` (0: k) packed: causal attention reads the first keys of values packed for all
    size_t panel() const { return size_t(rows ? rows : k) * VISION_PANEL; }  // floats per panel
};

// nn.GELU(), gelu_pytorch_tanh, CLIP's quick_gelu x·σ(1.702x), and the LLM's SwiGLU gate x·σ(x)
enum Gelu : int { GELU_ERF = 0, GELU_TANH = 1, GELU_QUICK = 2, SILU = 3 };

// y[i * ldy + j] = Σ_k x[i, k] · w[j, k] for rows i < m and output columns j in [j0, j1).
// An ISA file leaves nullptr where it has no kernel of its own; dispatch fills each such entry from the
// table below (avx512vnni <- avx512 <- avx2 <- ref, neon-dotprod <- neon <- ref), so the tables that
// best_kernels() and kernels_named() return have every entry set.
struct Kernels {
    const char* name;
    void (*q4_matmul)(const Q4Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1);
    void (*q8_matmul)(const Q8Weight& w, const ActQ8& x, float* y, int ldy, int j0, int j1);
    void (*f16_matmul)(const F16Weight& w, const float* x, int m, float* y, int ldy, int j0, int j1);
    // One query row of attention over n cached keys/values [n, hd]: out = softmax(q·kᵀ·scale)·v.
    // p: scratch for n scores.
    void (*attend)(const float* q, const float* k, const float* v, int n, int hd, float scale, float* p, float* out);
    // attend over a cache stored as IEEE half, and as int8 blocks (hd a multiple of QK): dequantised on the
    // fly; the scores, softmax and sums stay fp32
    void (*attend_f16)(const float* q, const uint16_t* k, const uint16_t* v, int n, int hd, float scale, float* p, float* out);
    void (*attend_q8)(const float* q, KvQ8 k, KvQ8 v, int n, int hd, float scale, float* p, float* out);
    // int4 weight × float activations: the exact mode (dequantised weights, no activation rounding)
    void (*q4_matmul_f32)(const Q4Weight& w, const float* x, int m, float* y, int ldy, int j0, int j1);
    // quantize_act, bit for bit (the kernels' ActQ8 input)
    void (*quantize)(const float* x, int m, int k, int8_t* q, float* d, float* sum);
    // The vision tower. Columns [j0, j1) with j0 a multiple of VISION_PANEL; bias may be null.
    // y = x.d[i] · scale[j] · (Σ_k x.q[i, k] · w[j, k] − 128 · sum[j]) + bias[j]: the products are exact integers
    void (*i8_gemm)(const I8Panels& w, const ActU8& x, const float* bias, float* y, int ldy, int j0, int j1);
    // y = Σ_k x[i · ldx + k] · w[j, k] + bias[j]
    void (*f32_gemm)(const F32Panels& w, const float* x, int ldx, int m, const float* bias, float* y, int ldy, int j0, int j1);
    // ONNX Runtime's per-token quantization bit for bit: d = max(max|x|, 1e-8) / 127, q = clip(rint(x / d), ±127) + 128
    void (*quantize_u8)(const float* x, int ldx, int m, int k, uint8_t* q, float* d);
    // y = (x − mean) / sqrt(var + eps) · g + b over each of m rows of k
    void (*layer_norm)(const float* x, int m, int k, const float* g, const float* b, float eps, float* y);
    void (*gelu)(float* x, size_t n, int kind);  // in place, kind a Gelu
    // each of m rows of n scores at s + i · lds: softmax(scale · row), in place
    void (*softmax)(float* s, int lds, int m, int n, float scale);
    // The peak probe: n rounds of the table's own multiply-accumulate instruction (int8: u8 × s8 dot products; else
    // fp32 FMA) on 12 independent register accumulators, nothing loaded; returns the multiply-accumulates done.
    double (*peak)(bool int8, long n);
    // The KV cache's and the embedding table's IEEE half rows: float_to_fp16 / fp16_to_float bit for bit (round to
    // nearest even, subnormal halves kept, NaN kept quiet)
    void (*to_fp16)(const float* x, size_t n, uint16_t* y);
    void (*from_fp16)(const uint16_t* x, size_t n, float* y);
};

// f(name, &Kernels::entry) for every entry: the one list that dispatch fills and the tests check.
template <class F>
void for_each_entry(F f) {
    static_assert(sizeof(Kernels) == 18 * sizeof(void*), "a new entry of Kernels belongs here too");
    f("q4_matmul", &Kernels::q4_matmul);
    f("q8_matmul", &Kernels::q8_matmul);
    f("f16_matmul", &Kernels::f16_matmul);
    f("attend", &Kernels::attend);
    f("attend_f16", &Kernels::attend_f16);
    f("attend_q8", &Kernels::attend_q8);
    f("q4_matmul_f32", &Kernels::q4_matmul_f32);
    f("quantize", &Kernels::quantize);
    f("i8_gemm", &Kernels::i8_gemm);
    f("f32_gemm", &Kernels::f32_gemm);
    f("quantize_u8", &Kernels::quantize_u8);
    f("layer_norm", &Kernels::layer_norm);
    f("gelu", &Kernels::gelu);
    f("softmax", &Kernels::softmax);
    f("peak", &Kernels::peak);
    f("to_fp16", &Kernels::to_fp16);
    f("from_fp16", &Kernels::from_fp16);
}

// Packing for the vision GEMMs (portable, once per weight at load; attention's keys and values once per head):
// w[j, t] = src[j · sj + t · st] for j < n, t < k.
void pack_i8_panels(const int8_t* src, size_t sj, size_t st, int n, int k, int8_t* q, int32_t* sum);
void pack_f32_panels(const float* src, size_t sj, size_t st, int n, int k, float* w);
inline size_t i8_panels_bytes(int n, int k) { return size_t(n16_of(n)) * k4_of(k) * 4; }
inline size_t f32_panels_floats(int n, int k) { return size_t(n16_of(n)) * k; }

// ---- blocked attention (the vision tower's layers, a prefill's): one head's keys and values as F32Panels ----------
constexpr int ATTENTION_BLOCK = 32;  // query rows per block: their scores against every key stay in L2

// One head's n keys as the columns of Q·Kᵀ (kp: f32_panels_floats(n, hd)) and its values as P·V's (vp:
// f32_panels_floats(hd, n)); row t of the keys at k + t·ld, of the values at v + t·ld.
inline void pack_kv_panels(const float* k, const float* v, size_t ld, int n, int hd, float* kp, float* vp) {
    pack_f32_panels(k, ld, 1, n, hd, kp);
    pack_f32_panels(v, 1, ld, hd, n, vp);
}

// `rows` query rows (q, ldq) against the first `keys` keys of a head packed for n (pack_kv_panels):
// out (ldo) = softmax(scale · q·kᵀ)·v. causal_from > 0: row r sees keys [0, causal_from + r) only, the later ones
// weigh exactly 0, so a row's arithmetic does not depend on its block. s: scratch of rows × lds floats, lds >= keys.
inline void attend_block(const Kernels& kt, const float* kp, const float* vp, int n, int hd, const float* q, int ldq,
                         int rows, int keys, int causal_from, float scale, float* s, int lds, float* out, int ldo) {
    kt.f32_gemm(F32Panels{kp, n, hd}, q, ldq, rows, nullptr, s, lds, 0, keys);
    if (causal_from <= 0) {
        kt.softmax(s, lds, rows, keys, scale);
    } else {
        for (int r = 0; r < rows; ++r) {
            float* row = s + size_t(r) * lds;
            kt.softmax(row, lds, 1, causal_from + r, scale);
            for (int t = causal_from + r; t < keys; ++t) row[t] = 0.f;
        }
    }
    kt.f32_gemm(F32Panels{vp, hd, keys, n}, s, lds, rows, nullptr, out, ldo, 0, hd);
}

void q4_matmul_f32_ref(const Q4Weight& w, const float* x, int m, float* y, int ldy, int j0, int j1);
void attend_ref(const float* q, const float* k, const float* v, int n, int hd, float scale, float* p, float* out);
void attend_f16_ref(const float* q, const uint16_t* k, const uint16_t* v, int n, int hd, float scale, float* p, float* out);
void attend_q8_ref(const float* q, KvQ8 k, KvQ8 v, int n, int hd, float scale, float* p, float* out);

// Σ of x.sum over each weight group, per activation row: the zero term is Σ_g scale·zero·X_g.
inline void group_sums(const ActQ8& x, int group, float* X) {
    const int nb = x.k / QK, per = group / QK;
    for (int i = 0; i < x.m; ++i)
        for (int g = 0; g < x.k / group; ++g) {
            float s = 0.f;
            for (int b = g * per; b < (g + 1) * per; ++b) s += x.sum[size_t(i) * nb + b];
            X[size_t(i) * (x.k / group) + g] = s;
        }
}

// The int4 matmul's loop, shared by the SIMD tables: `tile(std::integral_constant<int, MT>{}, i0, X, j0, j1)`
// multiplies activation rows i0 .. i0 + MT - 1 (MT ≤ 4) by weight rows [j0, j1); X holds group_sums.
template <class Tile>
void q4_matmul_tiles(const Q4Weight& w, const ActQ8& x, int j0, int j1, Tile tile) {
    thread_local std::vector<float> X;
    X.resize(size_t(x.m) * (w.k / w.group));
    group_sums(x, w.group, X.data());
    constexpr int JC = 16;  // weight rows kept in L1 while every activation row passes over them
    for (int jc = j0; jc < j1; jc += JC) {
        const int je = jc + JC < j1 ? jc + JC : j1;
        int i = 0;
        for (; i + 4 <= x.m; i += 4) tile(std::integral_constant<int, 4>{}, i, X.data(), jc, je);
        switch (x.m - i) {
            case 3: tile(std::integral_constant<int, 3>{}, i, X.data(), jc, je); break;
            case 2: tile(std::integral_constant<int, 2>{}, i, X.data(), jc, je); break;
            case 1: tile(std::integral_constant<int, 1>{}, i, X.data(), jc, je); break;
        }
    }
}

// Decode reads each weight row once, from memory: the row kernels fetch the rows PREFETCH_ROWS ahead as they read one
// (the hardware prefetchers alone left half of a core's read bandwidth unused: 4.1-4.7 against 8.2-9.6 GB/s for a
// 400 MB int4 GEMV on one thread of the AVX-512 Xeon; the 1B shape's decode 13-15 -> 18-21 tok/s on two).
constexpr int PREFETCH_ROWS = 8;

// ref's quantize (the bits every table's quantize gives) and the fp16 conversion, also used outside the tables.
void quantize_act(const float* x, int m, int k, int8_t* q, float* d, float* sum);
float fp16_to_float(uint16_t h);
// Float to IEEE half, rounding to nearest even (overflow to ±inf, subnormals kept, NaN stays NaN): the tables'
// to_fp16 bit for bit; one row of hd values (a multiple of QK) to KvQ8 blocks, as ggml's quantize_row_q8_0_ref.
uint16_t float_to_fp16(float f);
void quantize_kv_q8(const float* x, int hd, int8_t* q, uint16_t* d);

// A prefill GEMM panel of W output columns, gathered once per call by each SIMD table's pack_panel.
template <int W>
struct Q4Panel {
    std::vector<uint32_t> q;  // [pair of blocks][8][W]: dword t of each column's 32 packed bytes (low nibbles: the
                              // pair's first block, k = 4t .. 4t + 3; high nibbles: its second)
    std::vector<float> s;    // [block][W] each column's weight scale
    std::vector<float> sz;   // [group][W] each column's scale · zero
};

// A prefill GEMM panel's scales as the SIMD GEMMs read them: s[b · W + c] column c's weight scale for block b,
// sz[g · W + c] its scale · zero for group g; columns from `cols` on are zero. `h2f`: the table's own fp16 conversion
// (an inlined F16C instruction, where the portable fp16_to_float is a call: a panel converts hundreds).
template <int W, class ToFloat>
void panel_scales(const Q4Weight& w, int j0, int cols, std::vector<float>& s, std::vector<float>& sz, ToFloat h2f) {
    const int nb = w.k / QK, ng = w.k / w.group, gshift = __builtin_ctz(w.group / QK);
    s.assign(size_t(nb) * W, 0.f), sz.assign(size_t(ng) * W, 0.f);
    for (int c = 0; c < cols; ++c) {
        const uint16_t* ws = w.scales + size_t(j0 + c) * ng;
        const uint8_t* wz = w.zeros + size_t(j0 + c) * ng;
        for (int b = 0; b < nb; ++b) s[size_t(b) * W + c] = h2f(ws[b >> gshift]);
        for (int g = 0; g < ng; ++g) sz[size_t(g) * W + c] = h2f(ws[g]) * float(wz[g]);
    }
}

// The prefill GEMM's loop, shared by the SIMD tables: panels of W output columns in [j0, j1), each packed once by
// `pack(jc, cols)`, then `rows(std::integral_constant<int, MT>{}, i0, X, jc, cols)` over row tiles of up to 4 rows;
// X holds group_sums.
template <int W, class Pack, class Rows>
void q4_gemm_panels(const Q4Weight& w, const ActQ8& x, int j0, int j1, Pack pack, Rows rows) {
    thread_local std::vector<float> X;
    X.resize(size_t(x.m) * (w.k / w.group));
    group_sums(x, w.group, X.data());
    for (int jc = j0; jc < j1; jc += W) {
        const int cols = j1 - jc < W ? j1 - jc : W;
        pack(jc, cols);
        int i = 0;
        for (; i + 4 <= x.m; i += 4) rows(std::integral_constant<int, 4>{}, i, X.data(), jc, cols);
        switch (x.m - i) {
            case 3: rows(std::integral_constant<int, 3>{}, i, X.data(), jc, cols); break;
            case 2: rows(std::integral_constant<int, 2>{}, i, X.data(), jc, cols); break;
            case 1: rows(std::integral_constant<int, 1>{}, i, X.data(), jc, cols); break;
        }
    }
}

// The tables as their ISA files declare them, empty entries included: call the ones below instead.
extern const Kernels kRef;
#if defined(__x86_64__) || defined(_M_X64)
extern const Kernels kAvx2, kAvx512, kAvx512Vnni;
#endif
#if defined(__aarch64__)
extern const Kernels kNeon, kNeonDot;
#endif

// The best table this CPU runs, or the one named (nullptr if unknown or unsupported here).
const Kernels* best_kernels();
const Kernels* kernels_named(const char* name);
// Names of the tables this CPU can run, best last.
const char* const* supported_kernels(int* count);
// For tests: each entry of a table from the above, and the name of the ISA table whose function it
// runs (nullptr if none: an entry dispatch failed to fill).
std::vector<std::pair<const char*, const char*>> kernel_sources(const Kernels& resolved);
const char* cpu_name();

}  // namespace vila

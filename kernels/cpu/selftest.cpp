// Every kernel table this CPU runs against the portable one, and no entry left empty by dispatch,
// without Python: for checking a port on another architecture (e.g. under qemu-aarch64 -cpu max).
// Build: see kernels/README.md.
#include <cmath>
#include <cstring>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels.h"

using namespace vila;

static uint16_t to_fp16(float f) {  // positive normal values only, truncating: enough for test scales
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return uint16_t(((b >> 23 & 0xff) - 112) << 10 | (b >> 13 & 0x3ff));
}

static float rel_err(const std::vector<float>& a, const std::vector<float>& b) {
    float d = 0, m = 1e-6f;
    for (size_t i = 0; i < a.size(); ++i) d = std::fmax(d, std::fabs(a[i] - b[i])), m = std::fmax(m, std::fabs(b[i]));
    return d / m;
}

// kt.quantize gives quantize_act's bits.
static bool quantizes_like_ref(const Kernels& kt, const std::vector<float>& x, int m, int k) {
    std::vector<int8_t> q[2];
    std::vector<float> d[2], sum[2];
    for (int r = 0; r < 2; ++r) {
        q[r].resize(x.size()), d[r].resize(x.size() / QK), sum[r].resize(x.size() / QK);
        (r ? kt.quantize : quantize_act)(x.data(), m, k, q[r].data(), d[r].data(), sum[r].data());
    }
    const size_t fb = d[0].size() * sizeof(float);
    return q[0] == q[1] && !std::memcmp(d[0].data(), d[1].data(), fb) && !std::memcmp(sum[0].data(), sum[1].data(), fb);
}

int main() {
    std::mt19937 rng(0);
    std::uniform_int_distribution<int> nib(0, 15), i8(-127, 127);
    std::normal_distribution<float> normal;
    int count = 0, failures = 0;
    const char* const* names = supported_kernels(&count);
    for (int t = 0; t < count; ++t) {  // dispatch left no entry empty; where each one comes from
        std::printf("%-13s", names[t]);
        for (const auto& [entry, from] : kernel_sources(*kernels_named(names[t]))) {
            std::printf(" %s=%s", entry, from ? from : "EMPTY");
            failures += !from;
        }
        std::printf("\n");
    }
    // quantize on ties (x · 127 / amax = n + 1/2, to even), zero blocks, a negative amax, an odd last block
    std::vector<float> edge(2 * 160, 0.f);
    for (int t = 0; t < 64; ++t) edge[t] = t ? float(t - 32) + 0.5f : 127.f;      // 127 / amax = 1
    for (int t = 0; t < 64; ++t) edge[160 + t] = t ? float(2 * t - 65) : -254.f;  // 127 / amax = 1/2
    for (int t = 128; t < 160; ++t) edge[t] = edge[160 + t] = t % 2 ? -0.f : 0.25f * float(t - 144);
    for (int t = 1; t < count; ++t) {
        const bool same = quantizes_like_ref(*kernels_named(names[t]), edge, 2, 160);
        failures += !same;
        std::printf("%-13s %-14s ties, zeros  %s\n", names[t], "quantize", same ? "identical" : "FAIL");
    }
    const int shapes[][4] = {{1, 48, 576, 32}, {3, 33, 160, 32}, {5, 40, 1536, 64}, {9, 21, 256, 128}, {1, 3, 32, 32}};
    for (const auto& s : shapes) {
        const int m = s[0], n = s[1], k = s[2], g = s[3];
        std::vector<uint8_t> q(n * q4_row_bytes(k)), zeros(n * k / g);
        std::vector<uint16_t> scales(n * k / g), s8(n * k / QK), w16(n * k);
        std::vector<int8_t> w8(n * k), xq(m * k);
        std::vector<float> x(m * k), xd(m * k / QK), xs(m * k / QK);
        for (auto& v : q) v = uint8_t(nib(rng) | nib(rng) << 4);
        for (auto& v : zeros) v = uint8_t(nib(rng));
        for (auto& v : scales) v = to_fp16(0.001f + 0.05f * std::fabs(normal(rng)));
        for (auto& v : s8) v = to_fp16(0.001f + 0.01f * std::fabs(normal(rng)));
        for (auto& v : w16) v = to_fp16(0.001f + std::fabs(normal(rng)));
        for (auto& v : w8) v = int8_t(i8(rng));
        for (auto& v : x) v = normal(rng);
        quantize_act(x.data(), m, k, xq.data(), xd.data(), xs.data());
        const ActQ8 a{xq.data(), xd.data(), xs.data(), m, k};
        const Q4Weight w4{q.data(), scales.data(), zeros.data(), n, k, g};
        const Q8Weight q8{w8.data(), s8.data(), n, k};
        const F16Weight f16{w16.data(), n, k};
        std::vector<float> ref[7];
        for (int t = 0; t < count; ++t) {
            const Kernels* kt = kernels_named(names[t]);
            std::vector<float> y[7];
            for (auto& v : y) v.assign(m * n, 0.f);
            const bool same = quantizes_like_ref(*kt, x, m, k);
            failures += !same;
            std::printf("%-13s %-14s m=%d k=%d  %s\n", names[t], "quantize", m, k, same ? "identical" : "FAIL");
            kt->q4_matmul(w4, a, y[0].data(), n, 0, n);
            kt->q8_matmul(q8, a, y[1].data(), n, 0, n);
            kt->f16_matmul(f16, x.data(), m, y[2].data(), n, 0, n);
            kt->q4_matmul_f32(w4, x.data(), m, y[3].data(), n, 0, n);
            std::vector<float> scratch(n);
            const int hd = k % 64 ? 32 : 64, keys = n * k / hd / 2;  // the rows of w16 as keys and values
            std::vector<float> kv(size_t(2) * keys * hd);
            for (size_t t = 0; t < kv.size(); ++t) kv[t] = 0.1f * x[t % x.size()] + 0.01f * float(t % 7);
            scratch.resize(keys);
            y[4].assign(hd, 0.f);
            kt->attend(x.data(), kv.data(), kv.data() + size_t(keys) * hd, keys, hd, 0.125f, scratch.data(), y[4].data());
            // the same keys and values as an fp16 and an int8 cache
            std::vector<uint16_t> kv16(kv.size()), kvd(kv.size() / QK);
            std::vector<int8_t> kvq(kv.size());
            for (size_t i = 0; i < kv.size(); ++i) kv16[i] = float_to_fp16(kv[i]);
            for (int r = 0; r < 2 * keys; ++r)
                quantize_kv_q8(kv.data() + size_t(r) * hd, hd, kvq.data() + size_t(r) * hd, kvd.data() + size_t(r) * hd / QK);
            y[5].assign(hd, 0.f), y[6].assign(hd, 0.f);
            kt->attend_f16(x.data(), kv16.data(), kv16.data() + size_t(keys) * hd, keys, hd, 0.125f, scratch.data(), y[5].data());
            const KvQ8 kq{kvq.data(), kvd.data()}, vq{kvq.data() + size_t(keys) * hd, kvd.data() + size_t(keys) * hd / QK};
            kt->attend_q8(x.data(), kq, vq, keys, hd, 0.125f, scratch.data(), y[6].data());
            if (t == 0) {
                for (int i = 0; i < 7; ++i) ref[i] = y[i];
                continue;
            }
            const char* what[] = {"q4_matmul", "q8_matmul", "f16_matmul", "q4_matmul_f32", "attend", "attend_f16", "attend_q8"};
            for (int i = 0; i < 7; ++i) {
                const float e = rel_err(y[i], ref[i]);
                const bool ok = e < 1e-4f;
                failures += !ok;
                std::printf("%-13s %-14s m=%d n=%d k=%d g=%d  rel err %.2e  %s\n", names[t], what[i], m, n, k, g, e, ok ? "ok" : "FAIL");
            }
        }
    }
    std::printf("%s: %d tables (%s)\n", failures ? "FAILED" : "all agree", count, cpu_name());
    return failures ? 1 : 0;
}

#include "vit.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace vila {

VitLinear VitLinear::int8(const int8_t* w, const float* scale, const float* bias, int k, int n) {
    VitLinear l;
    l.n_ = n, l.k_ = k;
    l.q_.resize(i8_panels_bytes(n, k));
    l.sum_.assign(n16_of(n), 0);
    for (int j = 0; j < n * k; ++j)
        if (w[j] > 63 || w[j] < -63) throw std::invalid_argument("int8 weights beyond ±63: requantize the vision tower");
    pack_i8_panels(w, 1, size_t(n), n, k, l.q_.data(), l.sum_.data());  // W [k, n]: column j of the output is W[:, j]
    l.scale_.assign(n16_of(n), 0.f);
    std::copy(scale, scale + n, l.scale_.begin());
    if (bias) l.bias_.assign(bias, bias + n);
    return l;
}

VitLinear VitLinear::fp32(const float* w, const float* bias, int k, int n) {
    VitLinear l;
    l.n_ = n, l.k_ = k;
    l.w_.resize(f32_panels_floats(n, k));
    pack_f32_panels(w, 1, size_t(n), n, k, l.w_.data());
    if (bias) l.bias_.assign(bias, bias + n);
    return l;
}

VitEngine::VitEngine(const VitConfig& config, int threads, const std::string& kernels)
    : c_(config), k_(kernels.empty() ? best_kernels() : kernels_named(kernels.c_str())), pool_(threads) {
    if (!k_) throw std::invalid_argument("unknown or unsupported kernels: " + kernels);
    if (c_.hidden % c_.heads) throw std::invalid_argument("hidden is not a multiple of heads");
}

void VitEngine::add_layer(VitLayer l) {
    const int h = c_.hidden, i = c_.intermediate;
    auto shape = [](const VitLinear& x, int k, int n, const char* name) {
        if (x.k() != k || x.n() != n)
            throw std::invalid_argument(std::string(name) + ": weight [" + std::to_string(x.k()) + ", " + std::to_string(x.n()) +
                                        "], expected [" + std::to_string(k) + ", " + std::to_string(n) + "]");
    };
    shape(l.q, h, h, "q"), shape(l.k, h, h, "k"), shape(l.v, h, h, "v"), shape(l.o, h, h, "o");
    shape(l.fc1, h, i, "fc1"), shape(l.fc2, i, h, "fc2");
    for (const auto* n : {&l.norm1, &l.norm2})
        if (int(n->g.size()) != h || int(n->b.size()) != h) throw std::invalid_argument("a LayerNorm is not [hidden]");
    for (const auto* s : {&l.ls1, &l.ls2})
        if (!s->empty() && int(s->size()) != h) throw std::invalid_argument("a layer scale is not [hidden]");
    layers_.push_back(std::move(l));
}

void VitEngine::norm(const VitNorm& n, const float* x, int m, float* y) {
    timed("norm", [&] {
        pool_.parallel_for(m, 1, [&](int b, int e) {
            k_->layer_norm(x + size_t(b) * c_.hidden, e - b, c_.hidden, n.g.data(), n.b.data(), n.eps, y + size_t(b) * c_.hidden);
        });
    });
}

void VitEngine::linears(const float* x, int m, int k, std::initializer_list<std::pair<const VitLinear*, float*>> outs, int ldy) {
    const bool any_int8 = std::any_of(outs.begin(), outs.end(), [](const auto& o) { return o.first->is_int8(); });
    if (any_int8) {
        timed("quantize", [&] {
            pool_.parallel_for(m, 1, [&](int b, int e) {
                k_->quantize_u8(x + size_t(b) * k, k, e - b, k, aq_.data() + size_t(b) * k4_of(k) * 4, ad_.data() + b);
            });
        });
    }
    const ActU8 a{aq_.data(), ad_.data(), m, k};
    for (const auto& [l, y] : outs) {
        if (l->is_int8()) {
            const I8Panels w = l->i8();
            timed("int8 gemm", [&] {
                pool_.parallel_for(l->n(), VISION_PANEL, [&](int j0, int j1) { k_->i8_gemm(w, a, l->bias(), y, ldy, j0, j1); });
            });
        } else {
            const F32Panels w = l->f32();
            timed("fp32 gemm", [&] {
                pool_.parallel_for(l->n(), VISION_PANEL, [&](int j0, int j1) { k_->f32_gemm(w, x, k, m, l->bias(), y, ldy, j0, j1); });
            });
        }
    }
}

void VitEngine::attention(int m) {
    const int h = c_.hidden, nh = c_.heads, hd = h / nh;
    const size_t kp_head = f32_panels_floats(m, hd), vp_head = f32_panels_floats(hd, m);
    kp_.resize(kp_head * nh), vp_.resize(vp_head * nh);
    pool_.parallel_for(nh, 1, [&](int b, int e) {
        for (int head = b; head < e; ++head)
            pack_kv_panels(qkv_.data() + h + head * hd, qkv_.data() + 2 * h + head * hd, size_t(3) * h, m, hd,
                           kp_.data() + kp_head * head, vp_.data() + vp_head * head);
    });
    const int blocks = (m + ATTENTION_BLOCK - 1) / ATTENTION_BLOCK, lds = n16_of(m);
    const float scale = 1.f / std::sqrt(float(hd));
    pool_.parallel_for(nh * blocks, 1, [&](int b, int e) {
        thread_local std::vector<float> s;
        s.resize(size_t(ATTENTION_BLOCK) * lds);
        for (int job = b; job < e; ++job) {  // head-major: consecutive jobs read the same head's panels
            const int head = job / blocks, i0 = job % blocks * ATTENTION_BLOCK, rows = std::min(ATTENTION_BLOCK, m - i0);
            attend_block(*k_, kp_.data() + kp_head * head, vp_.data() + vp_head * head, m, hd,
                         qkv_.data() + size_t(i0) * 3 * h + head * hd, 3 * h, rows, m, 0, scale, s.data(), lds,
                         attn_.data() + size_t(i0) * h + head * hd, h);
        }
    });
}

void VitEngine::residual(float* x, const float* y, const std::vector<float>& ls, int m) {
    const int h = c_.hidden;
    timed("residual", [&] {
        pool_.parallel_for(m, 1, [&](int b, int e) {
            for (size_t t = size_t(b) * h; t < size_t(e) * h; ++t) x[t] += ls.empty() ? y[t] : y[t] * ls[t % h];
        });
    });
}

void VitEngine::forward(float* x, int m) {
    const int h = c_.hidden, in = c_.intermediate, widest = std::max(h, in);
    h_.resize(size_t(m) * h), qkv_.resize(size_t(m) * 3 * h), attn_.resize(size_t(m) * h), tmp_.resize(size_t(m) * h);
    mlp_.resize(size_t(m) * in), aq_.resize(size_t(m) * k4_of(widest) * 4), ad_.resize(m);
    for (const VitLayer& l : layers_) {
        norm(l.norm1, x, m, h_.data());
        linears(h_.data(), m, h, {{&l.q, qkv_.data()}, {&l.k, qkv_.data() + h}, {&l.v, qkv_.data() + 2 * h}}, 3 * h);
        timed("attention", [&] { attention(m); });
        linears(attn_.data(), m, h, {{&l.o, tmp_.data()}}, h);
        residual(x, tmp_.data(), l.ls1, m);
        norm(l.norm2, x, m, h_.data());
        linears(h_.data(), m, h, {{&l.fc1, mlp_.data()}}, in);
        timed("gelu", [&] {
            pool_.parallel_for(m, 1, [&](int b, int e) { k_->gelu(mlp_.data() + size_t(b) * in, size_t(e - b) * in, c_.gelu); });
        });
        linears(mlp_.data(), m, in, {{&l.fc2, tmp_.data()}}, h);
        residual(x, tmp_.data(), l.ls2, m);
    }
}

}  // namespace vila

// A vision tower's encoder layers on the CPU, in the W8A8 scheme of quant/dynamic_int8.py: int8 weights per output
// channel, activations quantized per token as they arrive; a layer the mixed precision kept float runs fp32. The
// pre-norm layers of SigLIP, CLIP and DINOv2 (layer scales 1 where a tower has none):
//     x += ls1 · o(attention(q(n1(x)), k(n1(x)), v(n1(x))))      x += ls2 · fc2(gelu(fc1(n2(x))))
// LayerNorm, GELU and softmax in fp32 SIMD; attention blocked by query rows, so a block's scores stay in cache.
#pragma once
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels.h"
#include "threadpool.h"

namespace vila {

struct VitConfig {
    int hidden, heads, intermediate;
    int gelu;  // a Gelu
};

// y [m, n] = x [m, k] · W + bias, W [k, n] as the ONNX graph holds it (MatMulInteger's or MatMul's weight).
class VitLinear {
public:
    VitLinear() = default;
    static VitLinear int8(const int8_t* w, const float* scale, const float* bias, int k, int n);
    static VitLinear fp32(const float* w, const float* bias, int k, int n);
    bool is_int8() const { return !q_.empty(); }
    int n() const { return n_; }
    int k() const { return k_; }
    I8Panels i8() const { return {q_.data(), scale_.data(), sum_.data(), n_, k_}; }
    F32Panels f32() const { return {w_.data(), n_, k_}; }
    const float* bias() const { return bias_.empty() ? nullptr : bias_.data(); }

private:
    std::vector<int8_t> q_;
    std::vector<float> scale_, w_, bias_;
    std::vector<int32_t> sum_;
    int n_ = 0, k_ = 0;
};

struct VitNorm {
    std::vector<float> g, b;
    float eps;
};

struct VitLayer {
    VitNorm norm1, norm2;
    VitLinear q, k, v, o, fc1, fc2;
    std::vector<float> ls1, ls2;  // [hidden] or empty
};

class VitEngine {
public:
    VitEngine(const VitConfig& config, int threads, const std::string& kernels);
    void add_layer(VitLayer layer);  // checked against the config; throws std::invalid_argument
    // x [tokens, hidden] through every layer, in place
    void forward(float* x, int tokens);
    int layers() const { return int(layers_.size()); }
    int threads() const { return pool_.size(); }
    const char* kernels() const { return k_->name; }
    // seconds spent per stage (norm, quantize, int8 gemm, fp32 gemm, attention, gelu, residual) since the last reset
    const std::map<std::string, double>& profile() const { return profile_; }
    void reset_profile() { profile_.clear(); }

private:
    template <class F>
    void timed(const char* stage, F f) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        profile_[stage] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    void norm(const VitNorm& n, const float* x, int m, float* y);
    // the linears reading x [m, ldx]: its int8 rows made once if any is int8, each output at out[i] (ldy its row)
    void linears(const float* x, int m, int k, std::initializer_list<std::pair<const VitLinear*, float*>> outs, int ldy);
    void attention(int m);  // qkv_ -> attn_
    void residual(float* x, const float* y, const std::vector<float>& ls, int m);

    VitConfig c_;
    const Kernels* k_;
    ThreadPool pool_;
    std::vector<VitLayer> layers_;
    std::vector<float> h_, qkv_, attn_, tmp_, mlp_, kp_, vp_;
    std::vector<uint8_t> aq_;
    std::vector<float> ad_;
    std::map<std::string, double> profile_;
};

}  // namespace vila

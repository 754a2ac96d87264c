#include "engine.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace vila {

MappedFile::MappedFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw std::runtime_error(path + ": cannot open (" + std::strerror(errno) + ")");
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size == 0) {
        ::close(fd);
        throw std::runtime_error(path + ": empty or unreadable");
    }
    size_ = size_t(st.st_size);
    void* p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) throw std::runtime_error(path + ": mmap failed (" + std::strerror(errno) + ")");
    data_ = static_cast<uint8_t*>(p);
}

MappedFile::~MappedFile() {
    if (data_) munmap(data_, size_);
}

static size_t itemsize(const std::string& dtype) {
    if (dtype == "F32") return 4;
    if (dtype == "F16") return 2;
    if (dtype == "U8" || dtype == "I8") return 1;
    throw std::invalid_argument("unsupported dtype " + dtype);
}

static std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

KvType kv_type_named(const std::string& name) {
    if (name == "fp32") return KvType::F32;
    if (name == "fp16") return KvType::F16;
    if (name == "int8") return KvType::Q8;
    throw std::invalid_argument("kv_cache '" + name + "': choose fp16, int8 or fp32");
}

const char* kv_type_name(KvType type) { return type == KvType::F32 ? "fp32" : type == KvType::F16 ? "fp16" : "int8"; }

KvCache::KvCache(KvType type, int layers, int kv_heads, int head_dim, int max_seq)
    : type_(type), layers_(layers), kv_heads_(kv_heads), hd_(head_dim), max_seq_(max_seq) {
    if (max_seq < 1) throw std::invalid_argument("max_seq must be at least 1");
    if (type == KvType::Q8 && head_dim % QK)
        throw std::invalid_argument("an int8 KV cache needs head_dim a multiple of 32 (it is " + std::to_string(head_dim) +
                                    "); open it with kv_cache fp16");
    reserve(1, 0);
}

size_t KvCache::row_bytes() const {
    return type_ == KvType::F32 ? 4 * size_t(hd_) : type_ == KvType::F16 ? 2 * size_t(hd_) : size_t(hd_) + 2 * size_t(hd_ / QK);
}

std::vector<size_t> KvCache::sections() const {
    if (type_ == KvType::Q8) return {size_t(hd_), 2 * size_t(hd_ / QK)};
    return {row_bytes()};
}

size_t KvCache::plane_bytes(int capacity) const { return size_t(layers_) * kv_heads_ * capacity * row_bytes(); }

// int8: where a plane's scales begin, after every head's values
static uint16_t* scales_of(uint8_t* plane, size_t values) { return reinterpret_cast<uint16_t*>(plane + values); }

void KvCache::reserve(int needed, int filled) {
    if (needed <= cap_) return;
    long long grown = 256;
    while (grown < needed) grown *= 2;
    const int cap = int(std::min<long long>(grown, max_seq_));
    const size_t heads = size_t(layers_) * kv_heads_;
    // both planes allocated before either is replaced: a failed allocation (bad_alloc) leaves the cache as it was
    std::unique_ptr<uint8_t[]> next[2] = {std::unique_ptr<uint8_t[]>(new uint8_t[plane_bytes(cap)]),
                                          std::unique_ptr<uint8_t[]>(new uint8_t[plane_bytes(cap)])};
    std::unique_ptr<uint8_t[]>* planes[2] = {&k_, &v_};
    for (int p = 0; p < 2; ++p) {
        size_t from = 0, to = 0;
        for (size_t row : sections()) {
            if (filled)
                for (size_t h = 0; h < heads; ++h)
                    std::memcpy(next[p].get() + to + h * cap * row, planes[p]->get() + from + h * cap_ * row, size_t(filled) * row);
            from += heads * cap_ * row, to += heads * cap * row;
        }
        *planes[p] = std::move(next[p]);
    }
    cap_ = cap;
}

void KvCache::write(const Kernels& kt, int layer, int head, int pos, const float* k, const float* v) {
    const size_t row = head_rows(layer, head) + pos, values = size_t(layers_) * kv_heads_ * cap_ * hd_;
    for (int which = 0; which < 2; ++which) {
        const float* x = which ? v : k;
        uint8_t* plane = (which ? v_ : k_).get();
        if (type_ == KvType::F32) {
            std::copy(x, x + hd_, reinterpret_cast<float*>(plane) + row * hd_);
        } else if (type_ == KvType::F16) {
            kt.to_fp16(x, hd_, reinterpret_cast<uint16_t*>(plane) + row * hd_);
        } else {
            quantize_kv_q8(x, hd_, reinterpret_cast<int8_t*>(plane) + row * hd_, scales_of(plane, values) + row * (hd_ / QK));
        }
    }
}

void KvCache::replicate(int filled, int to) {
    const size_t heads = size_t(layers_) * kv_heads_;
    for (uint8_t* plane : {k_.get(), v_.get()}) {
        size_t at = 0;
        for (size_t row : sections()) {
            for (size_t h = 0; h < heads; ++h) {
                uint8_t* rows = plane + at + h * cap_ * row;
                for (int t = filled; t < to; ++t) std::memcpy(rows + size_t(t) * row, rows + size_t(t % filled) * row, row);
            }
            at += heads * cap_ * row;
        }
    }
}

void KvCache::attend(const Kernels& kt, int layer, int head, const float* q, int n, float scale, float* p, float* out) const {
    const size_t row = head_rows(layer, head), values = size_t(layers_) * kv_heads_ * cap_ * hd_;
    uint8_t *k = k_.get(), *v = v_.get();
    if (type_ == KvType::F32)
        return kt.attend(q, reinterpret_cast<const float*>(k) + row * hd_, reinterpret_cast<const float*>(v) + row * hd_, n, hd_,
                         scale, p, out);
    if (type_ == KvType::F16)
        return kt.attend_f16(q, reinterpret_cast<const uint16_t*>(k) + row * hd_, reinterpret_cast<const uint16_t*>(v) + row * hd_,
                             n, hd_, scale, p, out);
    const KvQ8 kq{reinterpret_cast<const int8_t*>(k) + row * hd_, scales_of(k, values) + row * (hd_ / QK)};
    const KvQ8 vq{reinterpret_cast<const int8_t*>(v) + row * hd_, scales_of(v, values) + row * (hd_ / QK)};
    kt.attend_q8(q, kq, vq, n, hd_, scale, p, out);
}

void KvCache::read(const Kernels& kt, int layer, int head, int n, float* out) const {
    const size_t row = head_rows(layer, head), values = size_t(layers_) * kv_heads_ * cap_ * hd_;
    for (int which = 0; which < 2; ++which) {
        const uint8_t* plane = (which ? v_ : k_).get();
        float* y = out + size_t(which) * n * hd_;
        if (type_ == KvType::F32) {
            const float* x = reinterpret_cast<const float*>(plane) + row * hd_;
            std::copy(x, x + size_t(n) * hd_, y);
        } else if (type_ == KvType::F16) {
            kt.from_fp16(reinterpret_cast<const uint16_t*>(plane) + row * hd_, size_t(n) * hd_, y);
        } else {
            const int8_t* x = reinterpret_cast<const int8_t*>(plane) + row * hd_;
            const uint16_t* d = scales_of(const_cast<uint8_t*>(plane), values) + row * (hd_ / QK);
            for (size_t t = 0; t < size_t(n) * hd_; ++t) y[t] = fp16_to_float(d[t / QK]) * float(x[t]);
        }
    }
}

template <class T>
const T* Engine::tensor(const std::string& name, const char* dtype, std::vector<int64_t> shape) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw std::invalid_argument("tensor " + name + " missing");
    const TensorInfo& t = it->second;
    if (t.dtype != dtype || t.shape != shape)
        throw std::invalid_argument("tensor " + name + " is " + t.dtype + " " + shape_str(t.shape) + ", expected " + dtype +
                                    " " + shape_str(shape));
    size_t n = itemsize(t.dtype);
    for (int64_t d : t.shape) n *= size_t(d);
    if (t.end - t.begin != n || data_start_ + t.end > file_->size())
        throw std::invalid_argument("tensor " + name + " lies outside the file (truncated?)");
    const size_t at = data_start_ + t.begin;
    if (at % alignof(T)) throw std::invalid_argument("tensor " + name + " is misaligned");
    return reinterpret_cast<const T*>(file_->data() + at);
}

Linear Engine::linear(const std::string& name, int n, int k, bool bias) const {
    auto it = tensors_.find(name + ".scales");
    if (it == tensors_.end() || it->second.shape.size() != 2 || it->second.shape[1] <= 0)
        throw std::invalid_argument("tensor " + name + ".scales missing or not 2-D");
    const int groups = int(it->second.shape[1]), group = k / groups;
    if (group * groups != k || group % QK || (group & (group - 1)))
        throw std::invalid_argument(name + ": group size " + std::to_string(group) + " is not a power-of-two multiple of 32");
    Linear l;
    l.w = {tensor<uint8_t>(name + ".q", "U8", {n, int64_t(q4_row_bytes(k))}),
           tensor<uint16_t>(name + ".scales", "F16", {n, groups}), tensor<uint8_t>(name + ".zeros", "U8", {n, groups}), n,
           k, group};
    if (bias) l.bias = tensor<float>(name + ".bias", "F32", {n});
    return l;
}

Engine::Engine(const std::string& path, size_t data_start, const std::map<std::string, TensorInfo>& tensors,
               const ModelConfig& config, int max_seq, int threads, const std::string& kernels, bool int8_activations,
               KvType kv_cache)
    : file_(new MappedFile(path)), data_start_(data_start), tensors_(tensors), c_(config),
      k_(kernels.empty() ? best_kernels() : kernels_named(kernels.c_str())), pool_(threads), max_seq_(max_seq),
      int8_act_(int8_activations), cache_(kv_cache, config.layers, config.kv_heads, config.head_dim, max_seq) {
    if (!k_) throw std::invalid_argument("kernels '" + kernels + "' are not available on this CPU");
    const int H = c_.hidden, hd = c_.head_dim, I = c_.intermediate;
    const int nqkv = (c_.heads + 2 * c_.kv_heads) * hd;
    if (H % QK || I % QK || (c_.heads * hd) % QK) throw std::invalid_argument("hidden, intermediate and heads × head_dim must be multiples of 32");
    if (c_.heads % c_.kv_heads || int(c_.inv_freq.size()) != hd / 2) throw std::invalid_argument("inconsistent attention config");
    const bool qkv_bias = tensors_.count("layers.0.qkv.bias") > 0;
    embed_ = tensor<uint16_t>("embed", "F16", {c_.vocab, H});
    for (int i = 0; i < c_.layers; ++i) {
        const std::string p = "layers." + std::to_string(i) + ".";
        layers_.push_back({tensor<float>(p + "attn_norm", "F32", {H}), tensor<float>(p + "ffn_norm", "F32", {H}),
                           linear(p + "qkv", nqkv, H, qkv_bias), linear(p + "o", H, c_.heads * hd, false),
                           linear(p + "gate_up", 2 * I, H, false), linear(p + "down", H, I, false)});
    }
    norm_ = tensor<float>("norm", "F32", {H});
    if (tensors_.count("lm_head.q"))
        head_q8_ = {tensor<int8_t>("lm_head.q", "I8", {c_.vocab, H}), tensor<uint16_t>("lm_head.scales", "F16", {c_.vocab, H / QK}),
                    c_.vocab, H};
    else
        head_f16_ = {tensor<uint16_t>("lm_head.weight", "F16", {c_.vocab, H}), c_.vocab, H};

    const size_t C = kChunk, widest = std::max({size_t(H), size_t(2 * I), size_t(nqkv)});
    x_.resize(C * H), h_.resize(C * H), tmp_.resize(C * H), qkv_.resize(C * nqkv), attn_.resize(C * c_.heads * hd);
    gu_.resize(C * 2 * I), act_.resize(C * I), cos_.resize(C * hd / 2), sin_.resize(C * hd / 2);
    aq_.resize(C * widest), ad_.resize(C * widest / QK), as_.resize(C * widest / QK);
}

void Engine::trim(int n) {
    if (n < 0 || n > pos_) throw std::invalid_argument("trim(" + std::to_string(n) + ") outside the cache's " + std::to_string(pos_) + " positions");
    pos_ = n;
}

void Engine::extend(int n) {
    if (pos_ == 0 || n < 0 || pos_ + n > max_seq_)
        throw std::invalid_argument("extend(" + std::to_string(n) + ") needs cached positions to copy and room for them (" +
                                    std::to_string(pos_) + " of " + std::to_string(max_seq_) + " used)");
    cache_.reserve(pos_ + n, pos_);
    cache_.replicate(pos_, pos_ + n);
    pos_ += n;
}

void Engine::embed(const int32_t* ids, int n, float* out) const {
    for (int i = 0; i < n; ++i) {
        if (ids[i] < 0 || ids[i] >= c_.vocab) throw std::invalid_argument("token id " + std::to_string(ids[i]) + " outside the vocabulary");
        k_->from_fp16(embed_ + size_t(ids[i]) * c_.hidden, c_.hidden, out + size_t(i) * c_.hidden);
    }
}

void Engine::prefill(const float* embeds, int n, float* logits) {
    if (n <= 0) throw std::invalid_argument("prefill needs at least one position");
    if (pos_ + n > max_seq_)
        throw std::length_error("the cache holds " + std::to_string(max_seq_) + " positions; " + std::to_string(pos_) + " used, " +
                                std::to_string(n) + " more asked");
    cache_.reserve(pos_ + n, pos_);
    for (int i = 0, m; i < n; i += m) {
        m = std::min(kChunk, n - i);
        if (n - i - m > 0 && n - i - m < PANEL_ROWS) m = n - i - PANEL_ROWS;  // no short last chunk: see PANEL_ROWS
        std::copy(embeds + size_t(i) * c_.hidden, embeds + size_t(i + m) * c_.hidden, x_.begin());
        forward(m, i + m == n ? logits : nullptr);
    }
}

void Engine::decode(int token, float* logits) {
    if (pos_ + 1 > max_seq_) throw std::length_error("the cache is full (" + std::to_string(max_seq_) + " positions)");
    cache_.reserve(pos_ + 1, pos_);
    embed(&token, 1, x_.data());
    forward(1, logits);
}

void Engine::rmsnorm(const float* x, const float* w, int m, float* y) {
    const int H = c_.hidden;
    for (int i = 0; i < m; ++i) {
        const float* xr = x + size_t(i) * H;
        float ss = 0.f;
        for (int t = 0; t < H; ++t) ss += xr[t] * xr[t];
        const float r = 1.f / std::sqrt(ss / H + c_.rms_eps);
        for (int t = 0; t < H; ++t) y[size_t(i) * H + t] = w[t] * (xr[t] * r);
    }
}

// y [m, n] = x [m, k] · wᵀ (+ bias): activations to int8 blocks, then rows of w split over the pool.
void Engine::matmul(const Linear& l, const float* x, int m, float* y) {
    const int k = l.w.k, n = l.w.n, nb = k / QK;
    if (!int8_act_) {
        pool_.parallel_for(n, 16, [&](int j0, int j1) { k_->q4_matmul_f32(l.w, x, m, y, n, j0, j1); });
        return add_bias(l, m, y);
    }
    auto quantize = [&](int b, int e) {
        k_->quantize(x + size_t(b) * k, e - b, k, aq_.data() + size_t(b) * k, ad_.data() + size_t(b) * nb, as_.data() + size_t(b) * nb);
    };
    if (m < 8) quantize(0, m);  // not worth waking the pool
    else pool_.parallel_for(m, 1, quantize);
    const ActQ8 a{aq_.data(), ad_.data(), as_.data(), m, k};
    pool_.parallel_for(n, 16, [&](int j0, int j1) { k_->q4_matmul(l.w, a, y, n, j0, j1); });
    add_bias(l, m, y);
}

void Engine::add_bias(const Linear& l, int m, float* y) {
    if (l.bias)
        for (int i = 0; i < m; ++i)
            for (int j = 0; j < l.w.n; ++j) y[size_t(i) * l.w.n + j] += l.bias[j];
}

void Engine::rope_angles(int m) {
    const int half = c_.head_dim / 2;
    for (int i = 0; i < m; ++i)
        for (int t = 0; t < half; ++t) {
            const float a = float(pos_ + i) * c_.inv_freq[t];
            cos_[size_t(i) * half + t] = std::cos(a) * c_.rope_attention_scale;
            sin_[size_t(i) * half + t] = std::sin(a) * c_.rope_attention_scale;
        }
}

// Rotate-half RoPE on the q and k heads of each row, with the angles of rope_angles.
void Engine::rope(float* qkv, int m) {
    const int hd = c_.head_dim, half = hd / 2, heads = c_.heads + c_.kv_heads, stride = (c_.heads + 2 * c_.kv_heads) * hd;
    for (int i = 0; i < m; ++i) {
        const float *cs = cos_.data() + size_t(i) * half, *sn = sin_.data() + size_t(i) * half;
        for (int h = 0; h < heads; ++h) {
            float* v = qkv + size_t(i) * stride + size_t(h) * hd;
            for (int t = 0; t < half; ++t) {
                const float a = v[t], b = v[t + half];
                v[t] = a * cs[t] - b * sn[t];
                v[t + half] = b * cs[t] + a * sn[t];
            }
        }
    }
}

// Causal attention of m new rows over the cache (their own k/v already written).
void Engine::attention(int layer, const float* qkv, int m, float* out) {
    if (m >= PANEL_ROWS) return attention_blocked(layer, qkv, m, out);
    const int hd = c_.head_dim, nh = c_.heads, group = c_.heads / c_.kv_heads, stride = (nh + 2 * c_.kv_heads) * hd;
    const float scale = 1.f / std::sqrt(float(hd));
    pool_.parallel_for(nh * m, 1, [&](int b, int e) {
        thread_local std::vector<float> score;
        score.resize(pos_ + m);
        for (int task = b; task < e; ++task) {
            // head-major: a thread's consecutive tasks read the same cached rows, still warm in its caches
            const int h = task / m, i = task % m, n = pos_ + i + 1;
            const float* q = qkv + size_t(i) * stride + size_t(h) * hd;
            cache_.attend(*k_, layer, h / group, q, n, scale, score.data(), out + size_t(i) * nh * hd + size_t(h) * hd);
        }
    });
}

void Engine::attention_blocked(int layer, const float* qkv, int m, float* out) {
    const int hd = c_.head_dim, nh = c_.heads, nkv = c_.kv_heads, group = nh / nkv, stride = (nh + 2 * nkv) * hd;
    const int n = pos_ + m, lds = n16_of(n);
    const size_t kp_head = f32_panels_floats(n, hd), vp_head = f32_panels_floats(hd, n);
    kp_.resize(kp_head * nkv), vp_.resize(vp_head * nkv);
    pool_.parallel_for(nkv, 1, [&](int b, int e) {
        thread_local std::vector<float> rows;
        rows.resize(size_t(2) * n * hd);
        for (int h = b; h < e; ++h) {
            cache_.read(*k_, layer, h, n, rows.data());
            pack_kv_panels(rows.data(), rows.data() + size_t(n) * hd, size_t(hd), n, hd, kp_.data() + kp_head * h,
                           vp_.data() + vp_head * h);
        }
    });
    const int blocks = (m + ATTENTION_BLOCK - 1) / ATTENTION_BLOCK;
    const float scale = 1.f / std::sqrt(float(hd));
    pool_.parallel_for(nh * blocks, 1, [&](int b, int e) {
        thread_local std::vector<float> s;
        s.resize(size_t(ATTENTION_BLOCK) * lds);
        for (int job = b; job < e; ++job) {  // head-major: consecutive jobs read the same kv head's panels
            const int h = job / blocks, i0 = job % blocks * ATTENTION_BLOCK, rows = std::min(ATTENTION_BLOCK, m - i0);
            // row i0 + r sees positions [0, pos_ + i0 + r]
            attend_block(*k_, kp_.data() + kp_head * (h / group), vp_.data() + vp_head * (h / group), n, hd,
                         qkv + size_t(i0) * stride + size_t(h) * hd, stride, rows, pos_ + i0 + rows, pos_ + i0 + 1, scale,
                         s.data(), lds, out + size_t(i0) * nh * hd + size_t(h) * hd, nh * hd);
        }
    });
}

// m rows (positions pos_ .. pos_ + m - 1, embeddings in x_) through every layer; the last row's logits.
void Engine::forward(int m, float* logits) {
    const int H = c_.hidden, hd = c_.head_dim, I = c_.intermediate, nkv = c_.kv_heads, nh = c_.heads;
    const int stride = (nh + 2 * nkv) * hd;
    rope_angles(m);
    for (int l = 0; l < c_.layers; ++l) {
        const Layer& L = layers_[l];
        // attention: q, k, v of the normed rows, RoPE on q and k
        rmsnorm(x_.data(), L.attn_norm, m, h_.data());
        matmul(L.qkv, h_.data(), m, qkv_.data());
        rope(qkv_.data(), m);
        // the rows' k and v into the cache at their positions, in its storage type
        for (int i = 0; i < m; ++i)
            for (int h = 0; h < nkv; ++h) {
                const float* k = qkv_.data() + size_t(i) * stride + size_t(nh + h) * hd;
                cache_.write(*k_, l, h, pos_ + i, k, k + nkv * hd);
            }
        // each q head over the cache so far, then the output projection into the residual
        attention(l, qkv_.data(), m, attn_.data());
        matmul(L.o, attn_.data(), m, tmp_.data());
        for (size_t t = 0; t < size_t(m) * H; ++t) x_[t] += tmp_[t];
        // SwiGLU feed-forward: down(silu(gate(h)) * up(h)) into the residual
        rmsnorm(x_.data(), L.ffn_norm, m, h_.data());
        matmul(L.gate_up, h_.data(), m, gu_.data());
        auto swiglu = [&](int b, int e) {  // m · I exps (SIMD): over the pool at prefill, where they cost as much as a matmul
            for (int i = b; i < e; ++i) {
                float* a = act_.data() + size_t(i) * I;
                const float* g = gu_.data() + size_t(i) * 2 * I;
                std::copy(g, g + I, a);
                k_->gelu(a, I, SILU);
                for (int t = 0; t < I; ++t) a[t] *= g[I + t];
            }
        };
        if (m < PANEL_ROWS) swiglu(0, m);
        else pool_.parallel_for(m, 1, swiglu);
        matmul(L.down, act_.data(), m, tmp_.data());
        for (size_t t = 0; t < size_t(m) * H; ++t) x_[t] += tmp_[t];
    }
    pos_ += m;
    if (!logits) return;
    // final norm and lm_head on the last row only: int8 weights on int8 activations, or fp16 on floats
    rmsnorm(x_.data() + size_t(m - 1) * H, norm_, 1, h_.data());
    if (head_q8_.q) {
        k_->quantize(h_.data(), 1, H, aq_.data(), ad_.data(), as_.data());
        const ActQ8 a{aq_.data(), ad_.data(), as_.data(), 1, H};
        pool_.parallel_for(c_.vocab, 16, [&](int j0, int j1) { k_->q8_matmul(head_q8_, a, logits, c_.vocab, j0, j1); });
    } else {
        pool_.parallel_for(c_.vocab, 16, [&](int j0, int j1) { k_->f16_matmul(head_f16_, h_.data(), 1, logits, c_.vocab, j0, j1); });
    }
}

}  // namespace vila

// The LLM forward pass on the CPU: embeddings in, logits out, KV cache inside. Llama and Qwen2
// (q/k/v bias) decoder layers: RMSNorm, RoPE, grouped-query attention, SwiGLU; int4 linears.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels.h"
#include "threadpool.h"

namespace vila {

struct TensorInfo {
    std::string dtype;  // safetensors dtype: F32, F16, U8, I8
    std::vector<int64_t> shape;
    size_t begin, end;  // byte offsets from the start of the data section
};

struct ModelConfig {
    int hidden, layers, heads, kv_heads, head_dim, intermediate, vocab;
    float rms_eps;
    std::vector<float> inv_freq;  // head_dim / 2 rotary frequencies, scaling already applied
    float rope_attention_scale = 1.f;  // cos/sin multiplier of scaled rotary variants
};

// A read-only mapping of the engine's weight file.
class MappedFile {
public:
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }

private:
    uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

struct Linear {  // int4 weight, optional float bias
    Q4Weight w;
    const float* bias = nullptr;
};

struct Layer {
    const float *attn_norm, *ffn_norm;
    Linear qkv, o, gate_up, down;  // q, k, v rows stacked; gate rows then up rows
};

// The KV cache's storage, chosen when the engine is opened: fp32, IEEE half, or int8 blocks of QK along
// head_dim with one fp16 scale each (KvQ8, as llama.cpp's q8_0 cache).
enum class KvType { F32, F16, Q8 };
KvType kv_type_named(const std::string& name);  // "fp32", "fp16", "int8"
const char* kv_type_name(KvType type);

// K and V of every layer as [layer][kv_head][capacity][head_dim] (int8: the scales beside them as
// [layer][kv_head][capacity][head_dim / QK]). Allocated for what the context needs: reserve() grows the
// capacity to the next power of two (at least 256, at most max_seq), copying the filled positions bit for bit.
class KvCache {
public:
    KvCache(KvType type, int layers, int kv_heads, int head_dim, int max_seq);
    void reserve(int needed, int filled);  // capacity >= needed; positions [0, filled) kept
    void write(const Kernels& kt, int layer, int head, int pos, const float* k, const float* v);
    void replicate(int filled, int to);  // positions [filled, to) as copies of [0, filled), cyclically
    // kernels' attend over positions [0, n) of one kv head
    void attend(const Kernels& kt, int layer, int head, const float* q, int n, float scale, float* p, float* out) const;
    // positions [0, n) of one kv head as fp32 [n, head_dim]
    void read(const Kernels& kt, int layer, int head, int n, float* out) const;
    KvType type() const { return type_; }
    int capacity() const { return cap_; }
    size_t bytes() const { return 2 * plane_bytes(cap_); }  // K and V as allocated now

private:
    size_t row_bytes() const;                 // one position of one head: values and, for int8, scales
    size_t plane_bytes(int capacity) const;   // K (or V) for every layer and head at this capacity
    // a plane's sections, each [layer][kv_head][capacity][its bytes per row]: one, or int8's values then scales
    std::vector<size_t> sections() const;
    size_t head_rows(int layer, int head) const { return (size_t(layer) * kv_heads_ + head) * cap_; }
    KvType type_;
    int layers_, kv_heads_, hd_, max_seq_, cap_ = 0;
    // uninitialised: pages are committed as positions fill; int8 keeps the values first, then the scales
    std::unique_ptr<uint8_t[]> k_, v_;
};

class Engine {
public:
    Engine(const std::string& path, size_t data_start, const std::map<std::string, TensorInfo>& tensors,
           const ModelConfig& config, int max_seq, int threads, const std::string& kernels, bool int8_activations = true,
           KvType kv_cache = KvType::F16);

    // Appends n positions (embeddings [n, hidden]) to the cache; writes the last position's logits.
    void prefill(const float* embeds, int n, float* logits);
    void decode(int token, float* logits);
    void embed(const int32_t* ids, int n, float* out) const;
    void reset() { pos_ = 0; }
    void trim(int n);  // keep the first n positions
    // For benchmarks: n more positions, copies of the cached ones (decode at a long context without prefilling it;
    // attention costs the same whatever the rows hold)
    void extend(int n);

    int position() const { return pos_; }
    int max_seq() const { return max_seq_; }
    int threads() const { return pool_.size(); }
    const char* kernels() const { return k_->name; }
    bool int8_activations() const { return int8_act_; }
    const KvCache& cache() const { return cache_; }
    const ModelConfig& config() const { return c_; }

private:
    template <class T>
    const T* tensor(const std::string& name, const char* dtype, std::vector<int64_t> shape) const;
    Linear linear(const std::string& name, int n, int k, bool bias) const;
    void forward(int n, float* logits);
    void matmul(const Linear& l, const float* x, int m, float* y);
    void add_bias(const Linear& l, int m, float* y);
    void rmsnorm(const float* x, const float* w, int m, float* y);
    void rope_angles(int m);  // cos and sin for positions pos_ .. pos_ + m - 1, shared by every layer
    void rope(float* qkv, int m);
    void attention(int layer, const float* qkv, int m, float* out);
    // a prefill's attention (PANEL_ROWS rows or more): blocks of query rows against each kv head's keys and values as
    // fp32 panels, the scores of a block in cache (the vision GEMM and softmax kernels); causal per row
    void attention_blocked(int layer, const float* qkv, int m, float* out);

    std::unique_ptr<MappedFile> file_;
    size_t data_start_;
    std::map<std::string, TensorInfo> tensors_;
    ModelConfig c_;
    const Kernels* k_;
    ThreadPool pool_;
    int max_seq_, pos_ = 0;
    bool int8_act_;  // int8 blocks into the int4 linears (fast), or float (exact)

    const uint16_t* embed_;
    std::vector<Layer> layers_;
    const float* norm_;
    Q8Weight head_q8_{};
    F16Weight head_f16_{};

    // prefill positions per forward pass; sizes the scratch below. The prefill GEMM packs each weight panel once per
    // pass, so longer passes spread that over more rows (64 -> 256: 512-token prefill ~1.25x, 2048 ~1.6x with the blocked
    // attention, interleaved A/B on a 2-core Xeon)
    static constexpr int kChunk = 256;

    // Scratch for m <= kChunk rows (C = kChunk, H = hidden, hd = head_dim, I = intermediate, nh = heads,
    // nkv = kv_heads, W = the widest of H, 2 * I and (nh + 2 * nkv) * hd).
    std::vector<float> x_;     // (C, H) the residual stream
    std::vector<float> h_;     // (C, H) x after RMSNorm: what qkv, gate_up and the lm_head read
    std::vector<float> qkv_;   // (C, (nh + 2 * nkv) * hd) q heads, then k heads, then v heads, per row
    std::vector<float> attn_;  // (C, nh * hd) attention output, o's input
    std::vector<float> tmp_;   // (C, H) o's and down's output, before it is added to x
    std::vector<float> gu_;    // (C, 2 * I) gate, then up
    std::vector<float> act_;   // (C, I) silu(gate) * up, down's input
    std::vector<float> cos_, sin_;  // (C, hd / 2) RoPE angles of the rows' positions
    std::vector<int8_t> aq_;        // (C, W) a matmul's input as int8 blocks (ActQ8::q)
    std::vector<float> ad_, as_;    // (C, W / QK) their scales and scaled sums (ActQ8::d, ActQ8::sum)
    std::vector<float> kp_, vp_;    // attention_blocked: each kv head's keys and values [0, pos_ + m) as F32Panels
    KvCache cache_;
};

}  // namespace vila

// vila_edge._runtime: the CPU engine and its kernels, for the Python front (numpy in, numpy out).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <stdexcept>
#include <thread>
#include <vector>

#include "bindings.h"
#include "cpu/engine.h"

using namespace vila;

namespace {

struct Quantized {  // x as int8 blocks, kept alive for a kernel call
    std::vector<int8_t> q;
    std::vector<float> d, s;
    ActQ8 act;
    Quantized(const F32& x, const Kernels& kernels) {
        if (x.ndim() != 2 || x.shape(1) % QK) throw std::invalid_argument("x: need [m, k] with k a multiple of 32");
        const int m = int(x.shape(0)), kk = int(x.shape(1));
        q.resize(size_t(m) * kk), d.resize(size_t(m) * kk / QK), s.resize(d.size());
        kernels.quantize(x.data(), m, kk, q.data(), d.data(), s.data());
        act = {q.data(), d.data(), s.data(), m, kk};
    }
};

F32 out(int m, int n) { return F32({m, n}); }

// Kernel entry points for tests and micro-benchmarks: one table, all output columns.
F32 q4_matmul(const F32& x, const py::array& q, const py::array& scales, const py::array& zeros, const std::string& name) {
    const Kernels& k = kernels_or_throw(name);
    Quantized a(x, k);
    const int n = int(q.shape(0)), kk = a.act.k, groups = int(scales.shape(1));
    Q4Weight w{data_of<uint8_t>(q, "q", {n, py::ssize_t(q4_row_bytes(kk))}), data_of<uint16_t>(scales, "scales", {n, groups}),
               data_of<uint8_t>(zeros, "zeros", {n, groups}), n, kk, kk / groups};
    F32 y = out(a.act.m, n);
    k.q4_matmul(w, a.act, y.mutable_data(), n, 0, n);
    return y;
}

F32 q8_matmul(const F32& x, const py::array& q, const py::array& scales, const std::string& name) {
    const Kernels& k = kernels_or_throw(name);
    Quantized a(x, k);
    const int n = int(q.shape(0)), kk = a.act.k;
    Q8Weight w{data_of<int8_t>(q, "q", {n, kk}), data_of<uint16_t>(scales, "scales", {n, kk / QK}), n, kk};
    F32 y = out(a.act.m, n);
    k.q8_matmul(w, a.act, y.mutable_data(), n, 0, n);
    return y;
}

F32 q4_matmul_f32(const F32& x, const py::array& q, const py::array& scales, const py::array& zeros, const std::string& name) {
    const Kernels& k = kernels_or_throw(name);
    const int m = int(x.shape(0)), kk = int(x.shape(1)), n = int(q.shape(0)), groups = int(scales.shape(1));
    Q4Weight w{data_of<uint8_t>(q, "q", {n, py::ssize_t(q4_row_bytes(kk))}), data_of<uint16_t>(scales, "scales", {n, groups}),
               data_of<uint8_t>(zeros, "zeros", {n, groups}), n, kk, kk / groups};
    F32 y = out(m, n);
    k.q4_matmul_f32(w, x.data(), m, y.mutable_data(), n, 0, n);
    return y;
}

F32 f16_matmul(const F32& x, const py::array& w16, const std::string& name) {
    const Kernels& k = kernels_or_throw(name);
    const int m = int(x.shape(0)), kk = int(x.shape(1)), n = int(w16.shape(0));
    F16Weight w{data_of<uint16_t>(w16, "w", {n, kk}), n, kk};
    F32 y = out(m, n);
    k.f16_matmul(w, x.data(), m, y.mutable_data(), n, 0, n);
    return y;
}

// One query row [hd] over n cached rows [n, hd] in each storage the KV cache has (scale 1/sqrt(hd)).
F32 attend_out(const F32& q, py::ssize_t n, py::ssize_t hd, std::vector<float>& p) {
    if (q.ndim() != 1 || q.shape(0) != hd) throw std::invalid_argument("q: need [" + std::to_string(hd) + "]");
    if (n < 1) throw std::invalid_argument("need at least one cached row");
    p.resize(size_t(n));
    return F32(std::vector<py::ssize_t>{hd});
}

F32 attend(const F32& q, const F32& k, const F32& v, const std::string& name) {
    const Kernels& kt = kernels_or_throw(name);
    if (k.ndim() != 2) throw std::invalid_argument("k: need [n, hd]");
    const int n = int(k.shape(0)), hd = int(k.shape(1));
    std::vector<float> p;
    F32 y = attend_out(q, n, hd, p);
    kt.attend(q.data(), data_of<float>(k, "k", {n, hd}), data_of<float>(v, "v", {n, hd}), n, hd, 1.f / std::sqrt(float(hd)),
              p.data(), y.mutable_data());
    return y;
}

F32 attend_f16(const F32& q, const py::array& k, const py::array& v, const std::string& name) {
    const Kernels& kt = kernels_or_throw(name);
    if (k.ndim() != 2) throw std::invalid_argument("k: need [n, hd]");
    const int n = int(k.shape(0)), hd = int(k.shape(1));
    std::vector<float> p;
    F32 y = attend_out(q, n, hd, p);
    kt.attend_f16(q.data(), data_of<uint16_t>(k, "k", {n, hd}), data_of<uint16_t>(v, "v", {n, hd}), n, hd,
                  1.f / std::sqrt(float(hd)), p.data(), y.mutable_data());
    return y;
}

F32 attend_q8(const F32& q, const py::array& kq, const py::array& kd, const py::array& vq, const py::array& vd,
              const std::string& name) {
    const Kernels& kt = kernels_or_throw(name);
    if (kq.ndim() != 2 || kq.shape(1) % QK) throw std::invalid_argument("k: need [n, hd] with hd a multiple of 32");
    const int n = int(kq.shape(0)), hd = int(kq.shape(1));
    std::vector<float> p;
    F32 y = attend_out(q, n, hd, p);
    const KvQ8 k{data_of<int8_t>(kq, "k", {n, hd}), data_of<uint16_t>(kd, "k scales", {n, hd / QK})};
    const KvQ8 v{data_of<int8_t>(vq, "v", {n, hd}), data_of<uint16_t>(vd, "v scales", {n, hd / QK})};
    kt.attend_q8(q.data(), k, v, n, hd, 1.f / std::sqrt(float(hd)), p.data(), y.mutable_data());
    return y;
}

// The KV cache's writers: a table's to_fp16 (any shape; the portable one by default) and quantize_kv_q8 on each row of
// [n, hd]; its reader from_fp16.
py::array_t<uint16_t> to_fp16(const F32& x, const std::string& name) {
    py::array_t<uint16_t> y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    kernels_or_throw(name).to_fp16(x.data(), size_t(x.size()), y.mutable_data());
    return y;
}

py::array_t<float> from_fp16(const py::array_t<uint16_t, py::array::c_style | py::array::forcecast>& h, const std::string& name) {
    py::array_t<float> y(std::vector<py::ssize_t>(h.shape(), h.shape() + h.ndim()));
    kernels_or_throw(name).from_fp16(h.data(), size_t(h.size()), y.mutable_data());
    return y;
}

py::tuple quantize_kv(const F32& x) {
    if (x.ndim() != 2 || x.shape(1) % QK) throw std::invalid_argument("x: need [n, hd] with hd a multiple of 32");
    const int n = int(x.shape(0)), hd = int(x.shape(1));
    py::array_t<int8_t> q({n, hd});
    py::array_t<uint16_t> d({n, hd / QK});
    for (int i = 0; i < n; ++i)
        quantize_kv_q8(x.data() + size_t(i) * hd, hd, q.mutable_data() + size_t(i) * hd, d.mutable_data() + size_t(i) * (hd / QK));
    return py::make_tuple(q, d);
}

py::tuple quantize_activations(const F32& x, const std::string& name) {
    Quantized a(x, kernels_or_throw(name));
    py::array_t<int8_t> q({a.act.m, a.act.k});
    F32 d({a.act.m, a.act.k / QK});
    std::copy(a.q.begin(), a.q.end(), q.mutable_data());
    std::copy(a.d.begin(), a.d.end(), d.mutable_data());
    return py::make_tuple(q, d);
}

// GB/s of reading `mb` megabytes with `threads` threads (best of `repeat`): the decode ceiling's denominator. Each
// thread prefetches 8 KB ahead, as the decode kernels do: with the hardware prefetchers alone the AVX-512 Xeon read
// 8.8 / 14.6 GB/s (1 / 2 threads) where a prefetching reader gets 11.9 / 20.3, and decode then passed its "ceiling".
double read_bandwidth(int mb, int threads, int repeat) {
    const size_t n = size_t(mb) << 18;  // floats
    std::vector<float> buf(n, 1.f);
    ThreadPool pool(threads);
    std::vector<double> sink(size_t(pool.size()) * 8);  // a cache line apart, one per thread
    double best = 0;
    for (int r = 0; r < repeat; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        pool.run([&](int t) {
            const size_t b = n * t / pool.size() / 8 * 8, e = n * (t + 1) / pool.size() / 8 * 8;
            float acc[8] = {};
            for (size_t i = b; i < e; i += 8) {
                if (i % 16 == 0 && i + 2048 < e) __builtin_prefetch(&buf[i + 2048]);  // 8 KB ahead, as decode fetches its rows
                for (int l = 0; l < 8; ++l) acc[l] += buf[i + l];
            }
            for (float v : acc) sink[size_t(t) * 8] += v;
        });
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, double(n) * 4 / s / 1e9);
    }
    if (sink[0] < 0) best = 0;  // keeps the reads alive
    return best;
}

// The cores' peak multiply-accumulate rate (GMAC/s) on `threads` threads at once: each runs the table's peak probe for
// about `seconds`; the probe's work per round is known, so the rate is rounds × their MACs / the slowest thread's time.
double peak_gmacs(bool int8, int threads, double seconds, const std::string& name) {
    const Kernels& k = kernels_or_throw(name);
    const auto t0 = std::chrono::steady_clock::now();
    long n = 1 << 16;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds / 8) {
        k.peak(int8, n);
        n *= 2;
    }
    std::vector<double> macs(threads);
    std::vector<std::thread> pool;
    const auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { macs[t] = k.peak(int8, n); });
    for (auto& th : pool) th.join();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double total = 0;
    for (double m : macs) total += m;
    return total / dt / 1e9;
}

}  // namespace

PYBIND11_MODULE(_runtime, m) {
    m.doc() = "vila_edge's CPU engine: int4 LLM forward pass with per-ISA kernels";
    m.attr("QK") = QK;
    m.attr("PANEL_ROWS") = PANEL_ROWS;  // a prefill of fewer rows runs the decode kernels
    bind_vit(m);
    m.def("cpu_name", [] { return std::string(cpu_name()); });
    m.def("best_kernels", [] { return std::string(best_kernels()->name); });
    m.def("supported_kernels", [] {
        int n = 0;
        const char* const* names = supported_kernels(&n);
        return std::vector<std::string>(names, names + n);
    });
    m.def(
        "kernel_sources",
        [](const std::string& name) {
            py::dict sources;  // entry -> the ISA table whose function it runs (None: left empty)
            for (const auto& [entry, from] : kernel_sources(kernels_or_throw(name)))
                sources[entry] = from ? py::object(py::str(from)) : py::object(py::none());
            return sources;
        },
        py::arg("kernels") = "");
    m.def("q4_matmul", &q4_matmul, py::arg("x"), py::arg("q"), py::arg("scales"), py::arg("zeros"), py::arg("kernels") = "");
    m.def("q4_matmul_f32", &q4_matmul_f32, py::arg("x"), py::arg("q"), py::arg("scales"), py::arg("zeros"),
          py::arg("kernels") = "");
    m.def("q8_matmul", &q8_matmul, py::arg("x"), py::arg("q"), py::arg("scales"), py::arg("kernels") = "");
    m.def("f16_matmul", &f16_matmul, py::arg("x"), py::arg("w"), py::arg("kernels") = "");
    m.def("attend", &attend, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kernels") = "");
    m.def("attend_f16", &attend_f16, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kernels") = "");
    m.def("attend_q8", &attend_q8, py::arg("q"), py::arg("kq"), py::arg("kd"), py::arg("vq"), py::arg("vd"),
          py::arg("kernels") = "");
    m.def("to_fp16", &to_fp16, py::arg("x"), py::arg("kernels") = "ref");
    m.def("from_fp16", &from_fp16, py::arg("h"), py::arg("kernels") = "ref");
    m.def("quantize_kv", &quantize_kv, py::arg("x"));
    m.def("quantize_activations", &quantize_activations, py::arg("x"), py::arg("kernels") = "ref");
    m.def("peak_gmacs", &peak_gmacs, py::arg("int8") = true, py::arg("threads") = 1, py::arg("seconds") = 0.5,
          py::arg("kernels") = "", py::call_guard<py::gil_scoped_release>());
    m.def("read_bandwidth", &read_bandwidth, py::arg("mb") = 1024, py::arg("threads") = 1, py::arg("repeat") = 5,
          py::call_guard<py::gil_scoped_release>());

    py::class_<ModelConfig>(m, "ModelConfig")
        .def(py::init<>())
        .def_readwrite("hidden", &ModelConfig::hidden)
        .def_readwrite("layers", &ModelConfig::layers)
        .def_readwrite("heads", &ModelConfig::heads)
        .def_readwrite("kv_heads", &ModelConfig::kv_heads)
        .def_readwrite("head_dim", &ModelConfig::head_dim)
        .def_readwrite("intermediate", &ModelConfig::intermediate)
        .def_readwrite("vocab", &ModelConfig::vocab)
        .def_readwrite("rms_eps", &ModelConfig::rms_eps)
        .def_readwrite("inv_freq", &ModelConfig::inv_freq)
        .def_readwrite("rope_attention_scale", &ModelConfig::rope_attention_scale);

    py::class_<Engine>(m, "Engine")
        .def(py::init([](const std::string& path, size_t data_start, const py::dict& tensors, const ModelConfig& config,
                         int max_seq, int threads, const std::string& kernels, bool int8_activations,
                         const std::string& kv_cache) {
                 std::map<std::string, TensorInfo> index;
                 for (auto item : tensors) {
                     auto t = item.second.cast<py::tuple>();  // (dtype, shape, begin, end)
                     index[item.first.cast<std::string>()] = {t[0].cast<std::string>(), t[1].cast<std::vector<int64_t>>(),
                                                              t[2].cast<size_t>(), t[3].cast<size_t>()};
                 }
                 const KvType kv = kv_type_named(kv_cache);
                 py::gil_scoped_release release;
                 return new Engine(path, data_start, index, config, max_seq, threads, kernels, int8_activations, kv);
             }),
             py::arg("path"), py::arg("data_start"), py::arg("tensors"), py::arg("config"), py::arg("max_seq"),
             py::arg("threads") = 1, py::arg("kernels") = "", py::arg("int8_activations") = true, py::arg("kv_cache") = "fp16")
        .def("embed",
             [](const Engine& e, const I32& ids) {
                 if (ids.ndim() != 1) throw std::invalid_argument("ids: need a 1-D array");
                 F32 y = out(int(ids.shape(0)), e.config().hidden);
                 e.embed(ids.data(), int(ids.shape(0)), y.mutable_data());
                 return y;
             })
        .def("prefill",
             [](Engine& e, const F32& x) {
                 if (x.ndim() != 2 || x.shape(1) != e.config().hidden)
                     throw std::invalid_argument("embeds: need [n, " + std::to_string(e.config().hidden) + "]");
                 py::array_t<float> logits(e.config().vocab);
                 float* out = logits.mutable_data();
                 {
                     py::gil_scoped_release release;
                     e.prefill(x.data(), int(x.shape(0)), out);
                 }
                 return logits;
             })
        .def("decode",
             [](Engine& e, int token) {
                 py::array_t<float> logits(e.config().vocab);
                 float* out = logits.mutable_data();
                 {
                     py::gil_scoped_release release;
                     e.decode(token, out);
                 }
                 return logits;
             })
        .def("reset", &Engine::reset)
        .def("trim", &Engine::trim)
        .def("extend", &Engine::extend, py::arg("n"))
        .def_property_readonly("position", &Engine::position)
        .def_property_readonly("max_seq", &Engine::max_seq)
        .def_property_readonly("threads", &Engine::threads)
        .def_property_readonly("kernels", [](const Engine& e) { return std::string(e.kernels()); })
        .def_property_readonly("int8_activations", &Engine::int8_activations)
        .def_property_readonly("kv_cache", [](const Engine& e) { return std::string(kv_type_name(e.cache().type())); })
        .def_property_readonly("cache_capacity", [](const Engine& e) { return e.cache().capacity(); })
        .def_property_readonly("cache_bytes", [](const Engine& e) { return e.cache().bytes(); });
}

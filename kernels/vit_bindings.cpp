// The vision tower's engine (cpu/vit.h) and its kernels, for the Python front.
#include <pybind11/stl.h>

#include "bindings.h"
#include "cpu/vit.h"

namespace vila {
namespace {

using I8 = py::array_t<int8_t, py::array::c_style | py::array::forcecast>;

const float* optional(const py::object& a, const char* what, py::ssize_t n, F32& keep) {
    if (a.is_none()) return nullptr;
    keep = F32::ensure(a);
    return data_of<float>(keep, what, {n});
}

// W [k, n] int8 with its scale [n] (the ONNX MatMulInteger weight), or fp32 W [k, n]; bias [n] or None
VitLinear linear(const py::array& w, const py::object& scale, const py::object& bias, const char* what) {
    if (w.ndim() != 2) throw std::invalid_argument(std::string(what) + ": need a weight [k, n]");
    const int k = int(w.shape(0)), n = int(w.shape(1));
    F32 b, s;
    const float* bp = optional(bias, what, n, b);
    if (py::dtype::of<int8_t>().is(w.dtype())) {
        const float* sp = optional(scale, what, n, s);
        if (!sp) throw std::invalid_argument(std::string(what) + ": an int8 weight needs its scale");
        return VitLinear::int8(data_of<int8_t>(w, what, {k, n}), sp, bp, k, n);
    }
    F32 wf = F32::ensure(w);
    return VitLinear::fp32(data_of<float>(wf, what, {k, n}), bp, k, n);
}

VitLayer layer_of(const py::dict& t, float eps1, float eps2) {
    auto vec = [&](const char* key) {
        if (!t.contains(key)) return std::vector<float>();
        F32 a = F32::ensure(t[key]);
        return std::vector<float>(a.data(), a.data() + a.size());
    };
    auto lin = [&](const std::string& name) {
        const std::string wq = name + ".wq", wf = name + ".weight", s = name + ".wscale", b = name + ".bias";
        const py::object none = py::none();
        if (t.contains(wq.c_str()))
            return linear(t[wq.c_str()], py::object(t[s.c_str()]), t.contains(b.c_str()) ? py::object(t[b.c_str()]) : none, name.c_str());
        if (!t.contains(wf.c_str())) throw std::invalid_argument(name + ": no .wq nor .weight");
        return linear(t[wf.c_str()], none, t.contains(b.c_str()) ? py::object(t[b.c_str()]) : none, name.c_str());
    };
    VitLayer l;
    l.norm1 = {vec("norm1.weight"), vec("norm1.bias"), eps1};
    l.norm2 = {vec("norm2.weight"), vec("norm2.bias"), eps2};
    l.q = lin("q"), l.k = lin("k"), l.v = lin("v"), l.o = lin("o"), l.fc1 = lin("fc1"), l.fc2 = lin("fc2");
    l.ls1 = vec("ls1"), l.ls2 = vec("ls2");
    return l;
}

F32 run_linear(const F32& x, const py::array& w, const py::object& scale, const py::object& bias, const std::string& name) {
    const Kernels& kt = kernels_or_throw(name);
    if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.shape(0)) throw std::invalid_argument("x [m, k] · w [k, n]");
    const VitLinear l = linear(w, scale, bias, "w");
    const int m = int(x.shape(0)), k = l.k(), n = l.n();
    F32 y({m, n});
    if (l.is_int8()) {
        std::vector<uint8_t> q(size_t(m) * k4_of(k) * 4);
        std::vector<float> d(m);
        kt.quantize_u8(x.data(), k, m, k, q.data(), d.data());
        kt.i8_gemm(l.i8(), ActU8{q.data(), d.data(), m, k}, l.bias(), y.mutable_data(), n, 0, n);
    } else {
        kt.f32_gemm(l.f32(), x.data(), k, m, l.bias(), y.mutable_data(), n, 0, n);
    }
    return y;
}

py::tuple quantize_rows(const F32& x, const std::string& name) {
    if (x.ndim() != 2) throw std::invalid_argument("x: need [m, k]");
    const int m = int(x.shape(0)), k = int(x.shape(1));
    py::array_t<uint8_t> q({m, k4_of(k) * 4});
    F32 d({m});
    kernels_or_throw(name).quantize_u8(x.data(), k, m, k, q.mutable_data(), d.mutable_data());
    return py::make_tuple(q, d);
}

F32 rows_op(const F32& x, const std::string& name, const std::function<void(const Kernels&, float*, int, int)>& op) {
    if (x.ndim() != 2) throw std::invalid_argument("x: need [m, k]");
    F32 y({x.shape(0), x.shape(1)});
    std::copy(x.data(), x.data() + x.size(), y.mutable_data());
    op(kernels_or_throw(name), y.mutable_data(), int(x.shape(0)), int(x.shape(1)));
    return y;
}

}  // namespace

void bind_vit(py::module_& m) {
    m.attr("GELU_KINDS") = py::dict(py::arg("erf") = int(GELU_ERF), py::arg("tanh") = int(GELU_TANH),
                                    py::arg("quick") = int(GELU_QUICK));
    m.def("vit_linear", &run_linear, py::arg("x"), py::arg("w"), py::arg("scale") = py::none(), py::arg("bias") = py::none(),
          py::arg("kernels") = "");
    m.def("quantize_u8", &quantize_rows, py::arg("x"), py::arg("kernels") = "");
    m.def("layer_norm", [](const F32& x, const F32& g, const F32& b, float eps, const std::string& name) {
        const int k = int(x.shape(1));
        const float *gp = data_of<float>(g, "g", {k}), *bp = data_of<float>(b, "b", {k});
        return rows_op(x, name, [&](const Kernels& kt, float* y, int rows, int cols) { kt.layer_norm(y, rows, cols, gp, bp, eps, y); });
    }, py::arg("x"), py::arg("g"), py::arg("b"), py::arg("eps"), py::arg("kernels") = "");
    m.def("gelu", [](const F32& x, int kind, const std::string& name) {
        return rows_op(x, name, [&](const Kernels& kt, float* y, int rows, int cols) { kt.gelu(y, size_t(rows) * cols, kind); });
    }, py::arg("x"), py::arg("kind"), py::arg("kernels") = "");
    m.def("softmax", [](const F32& x, float scale, const std::string& name) {
        return rows_op(x, name, [&](const Kernels& kt, float* y, int rows, int cols) { kt.softmax(y, cols, rows, cols, scale); });
    }, py::arg("x"), py::arg("scale") = 1.f, py::arg("kernels") = "");

    py::class_<VitEngine>(m, "VitEngine")
        .def(py::init([](int hidden, int heads, int intermediate, int gelu, int threads, const std::string& kernels) {
                 if (gelu < GELU_ERF || gelu > GELU_QUICK) throw std::invalid_argument("gelu: one of GELU_KINDS");
                 return new VitEngine(VitConfig{hidden, heads, intermediate, gelu}, threads, kernels);
             }),
             py::arg("hidden"), py::arg("heads"), py::arg("intermediate"), py::arg("gelu"), py::arg("threads") = 1,
             py::arg("kernels") = "")
        .def("add_layer", [](VitEngine& e, const py::dict& t, float eps1, float eps2) { e.add_layer(layer_of(t, eps1, eps2)); },
             py::arg("tensors"), py::arg("eps1"), py::arg("eps2"))
        .def("forward",  // x [..., tokens, hidden]: each leading index (an image) through every layer
             [](VitEngine& e, const F32& x) {
                 if (x.ndim() < 2) throw std::invalid_argument("x: need [..., tokens, hidden]");
                 F32 y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
                 std::copy(x.data(), x.data() + x.size(), y.mutable_data());
                 const int tokens = int(x.shape(x.ndim() - 2));
                 const size_t per = size_t(tokens) * x.shape(x.ndim() - 1), n = per ? size_t(x.size()) / per : 0;
                 float* p = y.mutable_data();
                 py::gil_scoped_release unlocked;
                 for (size_t i = 0; i < n; ++i) e.forward(p + i * per, tokens);
                 return y;
             })
        .def_property_readonly("profile", &VitEngine::profile)  // seconds per stage since reset_profile()
        .def("reset_profile", &VitEngine::reset_profile)
        .def_property_readonly("layers", &VitEngine::layers)
        .def_property_readonly("threads", &VitEngine::threads)
        .def_property_readonly("kernels", [](const VitEngine& e) { return std::string(e.kernels()); });
}

}  // namespace vila

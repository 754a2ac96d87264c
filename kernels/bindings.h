// What the Python module's two files share: array checks and the kernel table by name.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace py = pybind11;

namespace vila {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

inline const Kernels& kernels_or_throw(const std::string& name) {
    const Kernels* k = name.empty() ? best_kernels() : kernels_named(name.c_str());
    if (!k) throw std::invalid_argument("kernels '" + name + "' are not available on this CPU");
    return *k;
}

template <class T>
const T* data_of(const py::array& a, const char* what, std::vector<py::ssize_t> shape) {
    if (a.ndim() != py::ssize_t(shape.size())) throw std::invalid_argument(std::string(what) + ": wrong rank");
    for (size_t i = 0; i < shape.size(); ++i)
        if (a.shape(i) != shape[i]) throw std::invalid_argument(std::string(what) + ": wrong shape");
    if (!(a.flags() & py::array::c_style) || a.itemsize() != sizeof(T))
        throw std::invalid_argument(std::string(what) + ": need a C-contiguous array of " + std::to_string(sizeof(T)) + "-byte items");
    return static_cast<const T*>(a.data());
}

void bind_vit(py::module_& m);  // vit_bindings.cpp: the vision tower's engine and its kernels

}  // namespace vila

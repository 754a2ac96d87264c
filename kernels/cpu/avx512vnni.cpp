// AVX-512 with VNNI (compiled with -mavx512vnni besides the AVX-512 flags).
#if defined(__x86_64__) || defined(_M_X64)
#define VILA_VNNI
#include "avx512_impl.h"

namespace vila {
const Kernels kAvx512Vnni = {"avx512vnni", q4_matmul, q8_matmul, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                             i8_gemm, nullptr, nullptr, nullptr, nullptr, nullptr, peak};
}
#endif

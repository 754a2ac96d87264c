// AVX-512 F/BW/VL without VNNI (compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c).
#if defined(__x86_64__) || defined(_M_X64)
#include "avx512_impl.h"

namespace vila {
const Kernels kAvx512 = {"avx512", q4_matmul, q8_matmul, f16_matmul, nullptr, nullptr, nullptr};
}
#endif

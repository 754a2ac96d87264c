// AArch64 baseline NEON (every ARMv8 core).
#if defined(__aarch64__)
#include "neon_impl.h"

namespace vila {
const Kernels kNeon = {"neon", q4_matmul, q8_matmul, f16_matmul, nullptr, nullptr, nullptr};
}
#endif

// AArch64 with the dot-product extension (ARMv8.2+: Apple M, Cortex-A76+, Jetson Orin's A78AE).
#if defined(__aarch64__)
#define VILA_DOTPROD
#include "neon_impl.h"

namespace vila {
const Kernels kNeonDot = {"neon-dotprod", q4_matmul, q8_matmul, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
}
#endif

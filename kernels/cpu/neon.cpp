// AArch64 baseline NEON (every ARMv8 core).
#if defined(__aarch64__)
#include "neon_impl.h"

namespace vila {
const Kernels kNeon = {"neon", q4_matmul, q8_matmul, f16_matmul, attend_ref, q4_matmul_f32_ref, quantize_act};
}
#endif

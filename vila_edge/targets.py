"""Deployment targets as data: memory, bandwidth, GPU architecture and default engine limits.
Figures from the vendors' data sheets (memory, bandwidth, SM) and TensorRT-LLM's Jetson notes (limits)."""

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    memory_gb: float  # device memory (Jetson: the pool CPU and GPU share)
    bandwidth_gb_s: float  # peak memory bandwidth
    sm: int | None  # CUDA compute capability ×10; None for cpu
    jetson: bool
    reserved_gb: float  # what the OS, display and driver keep (Jetson: L4T; desktop GPUs: display/driver)
    runtime_gb: float  # CUDA context, TensorRT and TensorRT-LLM libraries loaded
    max_batch: int
    max_input_len: int  # text + image tokens of one prompt
    max_seq_len: int  # prompt + generated tokens
    workspace_gb: float  # TensorRT builder WORKSPACE cap
    super_bandwidth_gb_s: float | None = None  # Orin Nano "Super" mode (JetPack 6.1+, 25 W)

    @property
    def is_gpu(self) -> bool:
        return self.sm is not None

    @property
    def usable_gb(self) -> float:
        return self.memory_gb - self.reserved_gb


TARGETS = {
    t.name: t
    for t in (
        Target("orin", "Jetson AGX Orin 64 GB", memory_gb=64, bandwidth_gb_s=204.8, sm=87, jetson=True, reserved_gb=2.0,
               runtime_gb=0.8, max_batch=1, max_input_len=2048, max_seq_len=2560, workspace_gb=4.0),
        Target("orin-32gb", "Jetson AGX Orin 32 GB", memory_gb=32, bandwidth_gb_s=204.8, sm=87, jetson=True,
               reserved_gb=2.0, runtime_gb=0.8, max_batch=1, max_input_len=2048, max_seq_len=2560, workspace_gb=4.0),
        Target("orin-nx", "Jetson Orin NX 16 GB", memory_gb=16, bandwidth_gb_s=102.4, sm=87, jetson=True,
               reserved_gb=1.5, runtime_gb=0.8, max_batch=1, max_input_len=2048, max_seq_len=2560, workspace_gb=2.0),
        # The smallest Jetson: shorter default limits so the KV cache and activations fit beside a 3B model.
        Target("orin-nano", "Jetson Orin Nano 8 GB", memory_gb=8, bandwidth_gb_s=68.0, sm=87, jetson=True,
               reserved_gb=1.5, runtime_gb=0.8, max_batch=1, max_input_len=1024, max_seq_len=1536, workspace_gb=1.0,
               super_bandwidth_gb_s=102.0),
        Target("rtx4090", "GeForce RTX 4090 24 GB", memory_gb=24, bandwidth_gb_s=1008.0, sm=89, jetson=False,
               reserved_gb=0.5, runtime_gb=1.0, max_batch=1, max_input_len=4096, max_seq_len=4608, workspace_gb=8.0),
        Target("a100", "A100 80 GB SXM", memory_gb=80, bandwidth_gb_s=2039.0, sm=80, jetson=False, reserved_gb=0.5,
               runtime_gb=1.0, max_batch=8, max_input_len=4096, max_seq_len=4608, workspace_gb=16.0),
        Target("h100", "H100 80 GB SXM", memory_gb=80, bandwidth_gb_s=3350.0, sm=90, jetson=False, reserved_gb=0.5,
               runtime_gb=1.0, max_batch=8, max_input_len=4096, max_seq_len=4608, workspace_gb=16.0),
        # The C++ engine: no GPU, no memory plan; its cache is sized at run time (caption --max-seq).
        Target("cpu", "a laptop or desktop CPU (the C++ engine)", memory_gb=0, bandwidth_gb_s=0.0, sm=None, jetson=False,
               reserved_gb=0.0, runtime_gb=0.0, max_batch=1, max_input_len=4096, max_seq_len=4096, workspace_gb=0.0),
    )
}
GPU_TARGETS = tuple(name for name, t in TARGETS.items() if t.is_gpu)


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UsageError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    return TARGETS[name]

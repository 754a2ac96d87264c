"""Deployment targets as data: memory, bandwidth, GPU architecture and default engine limits.
Figures from ../shared/reference/peers-and-limits.md §4 and tensorrt.md §3."""

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
    def usable_gb(self) -> float:
        return self.memory_gb - self.reserved_gb


TARGETS = {
    t.name: t
    for t in (
        Target("orin", "Jetson AGX Orin 64 GB", 64, 204.8, 87, True, 2.0, 0.8, 1, 2048, 2560, 4.0),
        Target("orin-32gb", "Jetson AGX Orin 32 GB", 32, 204.8, 87, True, 2.0, 0.8, 1, 2048, 2560, 4.0),
        Target("orin-nx", "Jetson Orin NX 16 GB", 16, 102.4, 87, True, 1.5, 0.8, 1, 2048, 2560, 2.0),
        Target("orin-nano", "Jetson Orin Nano 8 GB", 8, 68.0, 87, True, 1.5, 0.8, 1, 1024, 1536, 1.0, 102.0),
        Target("rtx4090", "GeForce RTX 4090 24 GB", 24, 1008.0, 89, False, 0.5, 1.0, 1, 4096, 4608, 8.0),
        Target("a100", "A100 80 GB SXM", 80, 2039.0, 80, False, 0.5, 1.0, 8, 4096, 4608, 16.0),
        Target("h100", "H100 80 GB SXM", 80, 3350.0, 90, False, 0.5, 1.0, 8, 4096, 4608, 16.0),
        Target("cpu", "a laptop or desktop CPU (the C++ engine)", 0, 0.0, None, False, 0.0, 0.0, 1, 4096, 4096, 0.0),
    )
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UsageError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    return TARGETS[name]

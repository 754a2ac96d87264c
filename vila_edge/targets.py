"""Deployment targets as data: memory, bandwidth, GPU architecture and default engine limits, and the GPU
software each kind of target is built with. Figures from the vendors' data sheets (memory, bandwidth, SM) and
TensorRT-LLM's Jetson notes (limits, support)."""

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
    runtime_gb: float  # CUDA context, TensorRT and TensorRT-LLM libraries loaded (Jetson: an estimate, see TARGETS)
    max_batch: int
    max_input_len: int  # text + image tokens of one prompt
    max_seq_len: int  # prompt + generated tokens
    workspace_gb: float  # TensorRT builder WORKSPACE cap
    super_bandwidth_gb_s: float | None = None  # Orin Nano "Super" mode (JetPack 6.1+, 25 W)
    nvidia_supported: bool = True  # False: TensorRT-LLM v0.12.0-jetson officially supports AGX Orin only

    @property
    def support_note(self) -> str:
        """What to tell a user of this target before they build on it; empty when NVIDIA supports it."""
        if self.nvidia_supported:
            return ""
        return (f"{self.description} is not officially supported by TensorRT-LLM v0.12.0-jetson (NVIDIA supports AGX "
                "Orin only; untested by NVIDIA, and by vila-edge on a device)")

    @property
    def is_gpu(self) -> bool:
        return self.sm is not None

    @property
    def usable_gb(self) -> float:
        return self.memory_gb - self.reserved_gb

    @property
    def stack(self) -> "Stack":
        return JETSON_STACK if self.jetson else DESKTOP_STACK


Version = tuple[int, int]


@dataclass(frozen=True)
class Stack:
    """The GPU software whose sources the build and run path was checked against; versions [low, high)."""

    platform: str
    cuda: str
    tensorrt: tuple[Version, Version]
    tensorrt_llm: tuple[Version, Version]
    install: str  # how to get TensorRT and TensorRT-LLM there (README: "Install" and the compatibility table)

    def accepts(self, library: str, version: str) -> bool:
        low, high = getattr(self, library)
        parsed = parse_version(version)
        return parsed is not None and low <= parsed < high

    def supported(self, library: str) -> str:
        (lo_major, lo_minor), (hi_major, hi_minor) = getattr(self, library)
        if (hi_major, hi_minor) == (lo_major, lo_minor + 1):
            return f"{lo_major}.{lo_minor}.x"
        last = f"{hi_major - 1}.x" if hi_minor == 0 else f"{hi_major}.{hi_minor - 1}.x"
        return f"{lo_major}.{lo_minor} to {last}"


def parse_version(version: str) -> Version | None:
    """(major, minor) of "0.12.0", "1.2.0rc1", "10.3.0.30"; None when it does not start with two numbers."""
    import re

    m = re.match(r"(\d+)\.(\d+)", str(version))
    return (int(m.group(1)), int(m.group(2))) if m else None


# TensorRT 10.3 is JetPack 6's; 11 dropped the FP16/INT8 builder flags, which the vision plan does not use.
JETSON_STACK = Stack(
    "JetPack 6.1 / 6.2 (L4T r36.4)", cuda="12.6", tensorrt=((10, 3), (12, 0)), tensorrt_llm=((0, 12), (0, 13)),
    install="JetPack 6.1/6.2 (CUDA 12.6, TensorRT 10.3 from its apt packages) and TensorRT-LLM v0.12.0-jetson "
            "(built per its README4Jetson.md, or the dustynv/tensorrt_llm:0.12-r36.4.0 container)",
)
# TensorRT-LLM after 1.2 removed trtllm-build and ModelRunnerCpp (the TensorRT backend) on main.
DESKTOP_STACK = Stack(
    "Linux x86-64, NVIDIA driver for CUDA 12", cuda="12.x", tensorrt=((10, 3), (12, 0)), tensorrt_llm=((0, 12), (1, 3)),
    install="the NVIDIA driver, TensorRT 10.3 to 11.x and TensorRT-LLM 0.12 to 1.2.x "
            "(pip install --extra-index-url https://pypi.nvidia.com 'tensorrt_llm>=1.0,<1.3')",
)

# TensorRT-LLM's Jetson notes measure ~1.3 GB beyond an 8B INT4 model's weights for TensorRT-LLM alone; vila-edge's
# process also loads torch's CUDA context and the TensorRT vision runtime. An estimate until measured on a device.
JETSON_RUNTIME_GB = 1.6
TARGETS = {
    t.name: t
    for t in (
        Target("orin", "Jetson AGX Orin 64 GB", memory_gb=64, bandwidth_gb_s=204.8, sm=87, jetson=True, reserved_gb=2.0,
               runtime_gb=JETSON_RUNTIME_GB, max_batch=1, max_input_len=2048, max_seq_len=2560, workspace_gb=4.0),
        Target("orin-32gb", "Jetson AGX Orin 32 GB", memory_gb=32, bandwidth_gb_s=204.8, sm=87, jetson=True,
               reserved_gb=2.0, runtime_gb=JETSON_RUNTIME_GB, max_batch=1, max_input_len=2048, max_seq_len=2560, workspace_gb=4.0),
        Target("orin-nx", "Jetson Orin NX 16 GB", memory_gb=16, bandwidth_gb_s=102.4, sm=87, jetson=True,
               reserved_gb=1.5, runtime_gb=JETSON_RUNTIME_GB, max_batch=1, max_input_len=2048, max_seq_len=2560, workspace_gb=2.0,
               nvidia_supported=False),
        # The smallest Jetson: shorter default limits so the KV cache and activations fit beside a 3B model.
        Target("orin-nano", "Jetson Orin Nano 8 GB", memory_gb=8, bandwidth_gb_s=68.0, sm=87, jetson=True,
               reserved_gb=1.5, runtime_gb=JETSON_RUNTIME_GB, max_batch=1, max_input_len=1024, max_seq_len=1536, workspace_gb=1.0,
               super_bandwidth_gb_s=102.0, nvidia_supported=False),
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

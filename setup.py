import glob
import platform

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # only `pip install` needs it, and pyproject.toml brings it
    from setuptools import Extension as Pybind11Extension

# Each instruction set's kernels are compiled with their own flags; the rest of the runtime with
# none, so the module loads on any CPU of its architecture and picks kernels at run time.
ISA_SOURCES = {
    "x86_64": {
        "kernels/cpu/avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
        "kernels/cpu/avx512.cpp": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl"],
        "kernels/cpu/avx512vnni.cpp": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
    },
    "aarch64": {
        "kernels/cpu/neon.cpp": [],
        "kernels/cpu/neon_dotprod.cpp": ["-march=armv8.2-a+dotprod"],
    },
}
ISA_SOURCES["AMD64"] = ISA_SOURCES["x86_64"]
ISA_SOURCES["arm64"] = ISA_SOURCES["aarch64"]
COMMON_SOURCES = ["kernels/bindings.cpp", "kernels/vit_bindings.cpp", "kernels/cpu/engine.cpp", "kernels/cpu/vit.cpp", "kernels/cpu/ref.cpp", "kernels/cpu/dispatch.cpp"]
CFLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-Wall"]


class BuildWithIsaFlags(build_ext):
    """Compiles the per-ISA kernel files with their flags, then links them into the extension."""

    def build_extension(self, ext):
        objects = []
        for source, flags in ISA_SOURCES.get(platform.machine(), {}).items():
            objects += self.compiler.compile(
                [source], output_dir=self.build_temp, extra_postargs=CFLAGS + flags, depends=ext.depends
            )
        ext.extra_objects = objects
        super().build_extension(ext)


runtime = Pybind11Extension(
    "vila_edge._runtime",
    COMMON_SOURCES,
    include_dirs=["kernels"],
    extra_compile_args=CFLAGS,
    extra_link_args=["-pthread"],
    depends=[
        "kernels/cpu/kernels.h", "kernels/cpu/engine.h", "kernels/cpu/vit.h", "kernels/cpu/threadpool.h", "kernels/bindings.h",
        "kernels/cpu/avx512_impl.h", "kernels/cpu/neon_impl.h",
    ],
)

CORE = [
    "tokenizers>=0.22",
    "safetensors>=0.4",
    "sentencepiece>=0.2",  # checks Llama tokenizer.model files
    "numpy>=1.26",  # TensorRT-LLM 0.12 on Jetson pins 1.26.1
    "pillow>=10",
    "opencv-python-headless>=4.8",
    "jinja2>=3.1",
    "tqdm>=4.66",
    "onnxruntime>=1.17",  # the cpu engine's vision ONNX; a range, as JetPack 6's Python 3.10 has no newest wheel
]
QUANTIZE = [  # quantize, eval-ppl, demo-checkpoint, build-engine from a checkpoint, caption CHECKPOINT (torch reference)
    "torch>=2.6",  # no exact pin: a CPU or CUDA build the user chose; 2.6 is transformers 5's floor
    "transformers>=5.23,<6",  # the tests run on 5.23
    "accelerate>=1.0",  # transformers needs it to load a GGUF
    "gguf>=0.10",  # demo checkpoint: SmolLM2 ships as a GGUF
    "onnx>=1.16",  # the vision tower's ONNX (fp32 and W8A8 QDQ), written at IR 9
    "protobuf>=4",  # transformers' sentencepiece conversion, onnx
]
EXTRAS = {
    "quantize": QUANTIZE,
    # Desktop GPUs. TensorRT-LLM (tensorrt_llm>=1.0,<1.3) is not here: it comes from NVIDIA's index,
    # pip install --extra-index-url https://pypi.nvidia.com 'tensorrt_llm>=1.0,<1.3'
    "trt": ["tensorrt-cu12>=10.3,<12"],
    # Jetson: power and clocks in bench. TensorRT, TensorRT-LLM and torch come from JetPack and NVIDIA's wheels.
    "jetson": ["jetson-stats>=4.2"],
    "plot": ["matplotlib>=3.8"],  # bench-table --plot
    # `vila-edge serve`: the HTTP server, its metrics, JSON-constrained decoding (numpy only, no torch)
    "serve": ["fastapi>=0.110", "uvicorn>=0.29", "websockets>=12", "prometheus-client>=0.20", "llguidance>=1.0",
              "paho-mqtt>=2.0"],
}
EXTRAS["test"] = [*QUANTIZE, *EXTRAS["serve"], "matplotlib>=3.8", "packaging>=23", "pytest>=8", "ruff==0.17.6",
                  "openai>=1.40", "httpx>=0.27"]  # what `make test` installs; the openai SDK and httpx: the server tests' clients


# Code outside vila_edge/ is installed under the vila_edge namespace: export/ as vila_edge.export.
setup(
    name="vila-edge",
    version="0.1.0",
    description="Edge deployment of VILA-family vision-language models",
    python_requires=">=3.10",
    packages=find_packages(include=["vila_edge", "vila_edge.*"]) + ["vila_edge.export"],
    package_dir={"vila_edge.export": "export"},
    data_files=[("share/vila-edge/recipes", sorted(glob.glob("recipes/*.json")))],
    ext_modules=[runtime],
    cmdclass={"build_ext": BuildWithIsaFlags},
    # The core runs a built engine (caption, bench), plan, inspect and bench-table: no torch, no transformers. A Jetson
    # keeps JetPack's CUDA torch that way; the extras bring the rest. `make test` pins the versions the tests ran on.
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["vila-edge=vila_edge.cli:main"]},
)

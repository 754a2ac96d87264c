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
COMMON_SOURCES = ["kernels/bindings.cpp", "kernels/cpu/engine.cpp", "kernels/cpu/ref.cpp", "kernels/cpu/dispatch.cpp"]
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
        "kernels/cpu/kernels.h", "kernels/cpu/engine.h", "kernels/cpu/threadpool.h",
        "kernels/cpu/avx512_impl.h", "kernels/cpu/neon_impl.h",
    ],
)

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
    install_requires=[
        "torch==2.13.0",  # a CPU build lies on disk; an unpinned torch pulls several GB of CUDA
        "transformers==5.23.0",
        "tokenizers>=0.22",
        "safetensors>=0.4",
        "sentencepiece>=0.2",  # Llama tokenizer.model files
        "protobuf>=4",
        "numpy>=1.26",
        "pillow>=10",
        "opencv-python-headless>=4.8",
        "jinja2>=3.1",
        "tqdm>=4.66",
        "gguf>=0.10",  # demo checkpoint: SmolLM2 ships as a GGUF
        "accelerate>=1.0",  # transformers needs it to load a GGUF
        "onnx==1.23.2",  # the vision tower's ONNX (fp32 and W8A8 QDQ)
        "onnxruntime==1.31.1",  # runs it on the CPU
    ],
    # plot: bench-table --plot; test (what `make test` installs) takes everything the tests exercise, and the linter
    extras_require={"plot": ["matplotlib>=3.8"], "test": ["pytest>=8", "matplotlib>=3.8", "ruff==0.17.6"]},
    entry_points={"console_scripts": ["vila-edge=vila_edge.cli:main"]},
)

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import trtllm_rules  # noqa: E402
from tiny import build_tiny_checkpoint, llama_tokenizer, qwen2_tokenizer  # noqa: E402

from vila_edge.cli import main  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run where TensorRT, TensorRT-LLM and a CUDA GPU are all present; elsewhere they say what is missing."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    from vila_edge.runtime.trt import probe_environment

    _, missing = probe_environment()
    if missing:
        skip = pytest.mark.skip(reason="needs TensorRT, TensorRT-LLM and a CUDA GPU: " + "; ".join(missing))
        for item in gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    llama_tokenizer(root / "llama")
    qwen2_tokenizer(root / "qwen2")
    return {"llama": root / "llama", "qwen2": root / "qwen2"}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, tokenizer_dirs):
    """tiny(projector_type="mlp_downsample", arch="llama", name=None, **top) -> checkpoint folder, built once per kind."""
    root, built = tmp_path_factory.mktemp("ckpts"), {}

    def make(projector_type="mlp_downsample", arch="llama", name=None, **top):
        key = (projector_type, arch, name, tuple(sorted(top.items())))
        if key not in built:
            folder = name or f"tiny-{arch}-{projector_type}-{len(built)}"
            built[key] = build_tiny_checkpoint(root / folder, tokenizer_dirs[arch], projector_type, arch, **top)
        return built[key]

    return make


# Fast AWQ settings for tiny checkpoints: the search runs, on little data.
QUICK_QUANT = ("--n-samples", 2, "--seqlen", 32, "--no-clip", "--quiet", "--vision-calib-images", 8)


@pytest.fixture(scope="session")
def awq(tiny, tmp_path_factory):
    """awq(arch="llama", group=32) -> the tiny checkpoint AWQ-quantized (with the W8A8 vision ONNX), once per kind."""
    root, built = tmp_path_factory.mktemp("awq"), {}

    def make(arch="llama", group=32):
        if (arch, group) not in built:
            out = root / f"{arch}-g{group}"
            code, _, err = run_cli("quantize", tiny(arch=arch), "-o", out, "--group-size", group, *QUICK_QUANT)
            assert code == 0, err
            built[arch, group] = out
        return built[arch, group]

    return make


@pytest.fixture(scope="session")
def caption_engine(awq, tmp_path_factory):
    """A cpu engine of the tiny Llama (AWQ g32, W8A8 vision) for the captioning loop's tests."""
    out = tmp_path_factory.mktemp("caption-engine") / "cpu"
    code, _, err = run_cli("build-engine", awq("llama", 32), "-o", out, "--target", "cpu", "--conv-mode", "vicuna_v1")
    assert code == 0, err
    return out


@pytest.fixture(scope="session")
def captioner(caption_engine):
    """captioner() -> a Captioner over a fresh CpuEngine of `caption_engine`, for caption_frames."""
    from vila_edge.caption import Captioner
    from vila_edge.runtime.cpu import CpuEngine

    def make():
        engine = CpuEngine(caption_engine)
        return Captioner(engine.info, engine)

    return make


@pytest.fixture
def copy_of(tmp_path):
    """A private copy of a checkpoint, to break."""
    import shutil

    def make(src):
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return make


def run_cli(*argv) -> tuple[int, str, str]:
    """Run `vila-edge ARGV` in-process: (exit code, stdout, stderr). Every TensorRT-LLM checkpoint build-engine
    writes is held to TensorRT-LLM's load rules (trtllm_rules.py) on the way out."""
    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    if argv[0] == "build-engine" and "-o" in argv and code in (0, 3):
        checkpoint = Path(argv[argv.index("-o") + 1]) / "trtllm_checkpoint"
        if checkpoint.is_dir():
            assert trtllm_rules.problems(checkpoint) == [], checkpoint
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli():
    return run_cli


# The quantize extra's packages (setup.py): a built engine, plan, inspect and bench-table run without them.
QUANTIZE_EXTRA = ("torch", "transformers", "accelerate", "gguf", "onnx")
WITHOUT_QUANTIZE_EXTRA = f"""
import io, json, sys
from contextlib import redirect_stderr, redirect_stdout

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {QUANTIZE_EXTRA!r}:
            raise ImportError(f"{{name}} is blocked in this test")

sys.meta_path.insert(0, Block())
from vila_edge.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    results.append((code, out.getvalue(), err.getvalue()))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {QUANTIZE_EXTRA!r})
assert not loaded, f"imported {{loaded}}"
print(json.dumps(results))
"""


def cli_without_quantize_extra(*commands) -> list[tuple[int, str, str]]:
    """Run each `vila-edge ARGV` of `commands` in one fresh interpreter where torch, transformers, accelerate, gguf
    and onnx cannot be imported (as after a core install); (exit code, stdout, stderr) for each. Fails if any of
    them got imported all the same."""
    argvs = json.dumps([[str(a) for a in argv] for argv in commands])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-c", WITHOUT_QUANTIZE_EXTRA, argvs], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    return [tuple(r) for r in json.loads(run.stdout)]

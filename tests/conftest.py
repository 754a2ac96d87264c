import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tiny_checkpoint, llama_tokenizer, qwen2_tokenizer  # noqa: E402

from vila_edge.cli import main  # noqa: E402


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
    """Run `vila-edge ARGV` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli():
    return run_cli

"""What `pip install` does with setup.py's requirements (issue 15, item 1: installing on a Jetson keeps JetPack's
CUDA torch), and the core commands without the quantize extra.

The metadata is setuptools' own (prepare_metadata_for_build_wheel, into a temporary folder: nothing is compiled
and nothing is written to the source tree). The pip tests run pip, offline, in a fresh venv against a wheelhouse
of stand-ins made here."""

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import cli_without_quantize_extra
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
JETPACK_TORCH = "2.5.0a0+872d972e41.nv24.08"  # NVIDIA's torch wheel for JetPack 6.1
GPU_STACK = {"torch", "torchvision", "tensorrt", "tensorrt-cu12", "tensorrt-llm", "transformers"}


# ---- the metadata -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dist_info(tmp_path_factory) -> Path:
    """The .dist-info folder setuptools writes for the wheel, without building it."""
    out = tmp_path_factory.mktemp("metadata")
    code = "import sys; from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    run = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out / run.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def requires(dist_info) -> dict[str | None, list[Requirement]]:
    """{None: the core requirements, extra: that extra's}, from METADATA's Requires-Dist."""
    meta = Parser().parsestr((dist_info / "METADATA").read_text())
    out = {None: [], **{extra: [] for extra in meta.get_all("Provides-Extra")}}
    for line in meta.get_all("Requires-Dist"):
        req = Requirement(line)
        extras = [e for e in out if e and req.marker and req.marker.evaluate({"extra": e})]
        for extra in extras or [None]:
            out[extra].append(Requirement(str(req).split(";")[0]))  # the marker said which extra; drop it
    return out


def names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def test_the_core_install_brings_no_torch_transformers_or_tensorrt(requires):
    assert not names(requires[None]) & (GPU_STACK | {"accelerate", "gguf", "onnx"})
    assert set(requires) >= {"quantize", "trt", "jetson", "plot", "test"}


def test_no_requirement_pins_torch_to_a_version(requires):
    torch = [(extra, r) for extra, reqs in requires.items() for r in reqs if canonicalize_name(r.name) == "torch"]
    assert {extra for extra, _ in torch} == {"quantize", "test"}
    for extra, req in torch:
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"[{extra}] pins {req}"
        assert req.specifier.contains(Version("2.13.0")), f"[{extra}] {req} refuses the tested CPU torch"


def test_the_jetson_extra_leaves_the_gpu_stack_to_jetpack(requires):
    assert names(requires["jetson"]) == {"jetson-stats"}
    assert not names(requires["jetson"]) & GPU_STACK


def test_the_trt_extra_takes_tensorrt_10_3_to_11(requires):
    (trt,) = requires["trt"]  # tensorrt_llm comes from NVIDIA's index (README), so it is not here
    assert canonicalize_name(trt.name) == "tensorrt-cu12"
    assert all(trt.specifier.contains(v) for v in ("10.3.0", "10.13.3", "11.4.0.106"))
    assert not any(trt.specifier.contains(v) for v in ("10.2.0", "12.0"))


def test_the_test_extra_holds_the_quantize_extra_and_the_tools(requires):
    test = {str(r) for r in requires["test"]}
    assert {str(r) for r in requires["quantize"]} <= test
    assert "ruff==0.17.6" in test and names(requires["test"]) >= {"pytest", "matplotlib"}
    transformers = next(r for r in requires["quantize"] if r.name == "transformers")
    assert "==" not in str(transformers.specifier) and transformers.specifier.contains("5.23.0")


# ---- pip, offline, in a venv holding JetPack's torch ------------------------------------------------


def write_wheel(folder: Path, name: str, version: str, metadata: str = "", files: dict[str, str] | None = None) -> Path:
    """A pure-Python wheel with `metadata` lines after Name and Version, and `files` (path -> text)."""
    dist = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    contents = {
        **(files or {}),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{metadata}",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: vila-edge tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name_in_zip, text in contents.items():
            z.writestr(name_in_zip, text)
        z.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return path


def write_standin(folder: Path, name: str, version: str) -> Path:
    """A stand-in distribution: the name and version of a real package and nothing of it, so the test sees
    which versions pip installs or replaces. It exists only to check what pip does with our metadata."""
    module = canonicalize_name(name).replace("-", "_")
    doc = f'"""Stand-in for {name} {version}: only its name and version, to check what pip does with vila-edge\'s metadata."""\n'
    return write_wheel(folder, name, version, files={f"{module}/__init__.py": doc + f"__version__ = {version!r}\n"})


def lowest_allowed(req: Requirement) -> str:
    """The lowest version a requirement's own bounds name that it accepts (a stand-in's version)."""
    named = sorted(Version(s.version) for s in req.specifier if "*" not in s.version)
    return str(next((v for v in named if req.specifier.contains(v, prereleases=True)), "1.0"))


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory, dist_info, requires) -> Path:
    """vila-edge as its metadata alone (setuptools' METADATA, no code: the C++ extension is not built), the same
    with the old torch==2.13.0 pin as 0.0.1, and stand-ins for torch (JetPack's and 2.13.0) and every core and
    [jetson] requirement."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    meta = (dist_info / "METADATA").read_text()
    write_wheel(folder, "vila-edge", "0.1.0", meta.split("\n", 3)[3])  # after Metadata-Version, Name, Version
    write_wheel(folder, "vila-edge", "0.0.1", "Requires-Dist: torch==2.13.0\n")
    for version in (JETPACK_TORCH, "2.13.0"):
        write_standin(folder, "torch", version)
    for req in requires[None] + requires["jetson"]:
        write_standin(folder, req.name, lowest_allowed(req))
    return folder


def pip(venv: Path, wheelhouse: Path, *args: str) -> str:
    """pip in `venv`, from `wheelhouse` alone: no index, and none of this machine's pip configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse),
               "--disable-pip-version-check", "--no-input", *args]
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def installed(venv: Path, name: str) -> str | None:
    code = f"import importlib.metadata as m\ntry: print(m.version({name!r}))\nexcept m.PackageNotFoundError: print()"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True).stdout
    return out.strip() or None


@pytest.fixture(scope="module")
def jetson_venv(tmp_path_factory, wheelhouse) -> Path:
    """A venv (with pip) where JetPack's torch is installed, as on a Jetson."""
    venv = tmp_path_factory.mktemp("jetson") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip(venv, wheelhouse, f"torch=={JETPACK_TORCH}")
    assert installed(venv, "torch") == JETPACK_TORCH
    return venv


def test_installing_on_a_jetson_keeps_jetpacks_torch(jetson_venv, wheelhouse, requires):
    # vila-edge with --no-deps, then the [jetson] extra's requirements
    pip(jetson_venv, wheelhouse, "--no-deps", "vila-edge==0.1.0")
    pip(jetson_venv, wheelhouse, *(str(r) for r in requires["jetson"]))
    assert installed(jetson_venv, "vila-edge") == "0.1.0" and installed(jetson_venv, "jetson-stats")
    assert installed(jetson_venv, "torch") == JETPACK_TORCH
    # README's second step: pip's resolver over the whole of the core and [jetson] requirements leaves it too
    out = pip(jetson_venv, wheelhouse, "vila-edge[jetson]")
    assert installed(jetson_venv, "vila-edge") == "0.1.0" and all(installed(jetson_venv, r.name) for r in requires[None])
    assert installed(jetson_venv, "torch") == JETPACK_TORCH, out
    # the check can fail: the old requirements (torch==2.13.0) replace JetPack's torch with a CPU one
    pip(jetson_venv, wheelhouse, "vila-edge==0.0.1")
    assert installed(jetson_venv, "torch") == "2.13.0"


# ---- the core commands without the quantize extra -------------------------------------------------


def test_the_core_commands_run_without_the_quantize_extra(tiny, caption_engine, tmp_path):
    from vila_edge.demo import write_sample_image

    image, result = write_sample_image(tmp_path / "scene.png", size=96), tmp_path / "results" / "tiny.json"
    caption = ("caption", caption_engine, "--image", image, "--prompt", "Describe the image.", "--max-new-tokens", 3,
               "--format", "jsonl")
    bench = ("bench", caption_engine, "--prompt-len", 128, "--gen-len", 2, "--images", 1, "--repeat", 1,
             "--warmup", 0, "--threads", 1, "--bandwidth-gb-s", 20, "-o", result)
    runs = cli_without_quantize_extra(
        caption, bench, ("plan", "--recipe", "vila1.5-3b", "--target", "orin-nano"),
        ("inspect", tiny(arch="qwen2"), "--format", "json"), ("inspect", caption_engine, "--format", "json"),
        ("bench-table", result),
    )
    for (code, _, err), argv in zip(runs, ("caption", "bench", "plan", "inspect", "inspect", "bench-table")):
        assert code == 0, f"{argv}: {err}"
    (_, answer, _), (_, bench_text, _), (_, plan, _), (_, ckpt, _), (_, engine, _), (_, table, _) = runs
    assert json.loads(answer)["backend"].startswith("cpu") and len(json.loads(answer)["token_ids"]) <= 3
    assert "decode at " in bench_text and json.loads(result.read_text())["decode_tok_s"] > 0
    assert "fits" in plan and json.loads(ckpt)["conv_mode"] == "auto"  # from the tokenizer's chat template
    assert json.loads(engine)["target"] == "cpu" and json.loads(engine)["conv_mode"] == "vicuna_v1"
    assert "| llama-g32 | AWQ int4 g32 |" in table


def test_commands_that_need_the_quantize_extra_say_which(tiny, tmp_path):
    ckpt = tiny()
    runs = cli_without_quantize_extra(
        ("quantize", ckpt, "-o", tmp_path / "q"), ("caption", ckpt, "--prompt", "Hi"),
        ("demo-checkpoint", tmp_path / "demo"), ("eval-ppl", ckpt, "--text", ckpt / "config.json"),
        ("build-engine", ckpt, "-o", tmp_path / "e", "--target", "cpu"),
    )
    for code, out, err in runs:
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
        assert "needs torch, which is not installed; pip install 'vila-edge[quantize]'" in err
    assert runs[1][2].startswith(f"vila-edge caption: error: {ckpt} is a checkpoint")
    assert not any((tmp_path / name).exists() for name in ("q", "demo", "e"))

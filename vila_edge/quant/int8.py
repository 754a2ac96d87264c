"""W8A8 as explicit Q/DQ in an ONNX graph: what TensorRT builds into an INT8 plan and ONNX Runtime runs on a CPU.

Every MatMul and Conv with a weight initializer gets
- its weight stored int8, symmetric per output channel, behind a DequantizeLinear (axis 1 of a
  MatMul's [K, N], axis 0 of a Conv's [O, I, kh, kw]);
- its activation input behind QuantizeLinear -> DequantizeLinear, int8 symmetric per tensor,
  one pair per tensor however many nodes read it (q/k/v share the LayerNorm output).
Biases, LayerNorm, Softmax, GELU and the attention products stay float (TensorRT#4084).
Activation ranges come from calibration: max, a percentile of |x|, or TensorRT's entropy (KL)
threshold over a 2048-bin histogram.
"""

import re
from dataclasses import dataclass

import numpy as np

QMAX = 127
HIST_BINS = 2048
METHODS = ("max", "percentile", "entropy", "mse")  # mse: quant/range_search.py, on the readers' output error


@dataclass(frozen=True)
class QuantTarget:
    node: str  # node name
    activation: str  # the input tensor that gets Q/DQ
    weight: str  # the weight initializer
    axis: int  # output-channel axis of the weight


def fold_identities(model) -> None:
    """torch.onnx routes shared weights through Identity nodes: point their readers at the initializer."""
    inits = {i.name for i in model.graph.initializer}
    rename = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    keep = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in rename)]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def quant_targets(model, keep_float: tuple[str, ...] = ()) -> list[QuantTarget]:
    """The weighted MatMul / Conv nodes, minus those whose name matches a keep_float regex."""
    shapes = {i.name: len(i.dims) for i in model.graph.initializer}
    targets = []
    for node in model.graph.node:
        if any(re.search(p, node.name) for p in keep_float):
            continue
        if node.op_type == "MatMul" and shapes.get(node.input[1]) == 2:
            targets.append(QuantTarget(node.name, node.input[0], node.input[1], 1))
        elif node.op_type == "Conv" and shapes.get(node.input[1]) == 4:
            targets.append(QuantTarget(node.name, node.input[0], node.input[1], 0))
    return targets


def reader_weights(model, targets: list[QuantTarget]) -> dict[str, list[np.ndarray]]:
    """Each quantized activation's readers' weights (q/k/v read one LayerNorm output)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, list[np.ndarray]] = {}
    for t in targets:
        out.setdefault(t.activation, []).append(numpy_helper.to_array(inits[t.weight]))
    return out


# ---- calibration ------------------------------------------------------------------------------


class RangeObserver:
    """Per-tensor |x| statistics over calibration batches: first the max, then (second pass) a histogram."""

    def __init__(self):
        self.amax: dict[str, float] = {}
        self.hist: dict[str, np.ndarray] = {}

    def observe_max(self, values: dict[str, np.ndarray]) -> None:
        for name, x in values.items():
            self.amax[name] = max(self.amax.get(name, 0.0), float(np.abs(x).max()))

    def observe_hist(self, values: dict[str, np.ndarray]) -> None:
        for name, x in values.items():
            top = self.amax[name] or 1.0
            h, _ = np.histogram(np.abs(x), bins=HIST_BINS, range=(0.0, top))
            self.hist[name] = self.hist.get(name, 0) + h

    def threshold(self, name: str, method: str, percentile: float = 99.99) -> float:
        if method == "max":
            return self.amax[name]
        hist, width = self.hist[name], (self.amax[name] or 1.0) / HIST_BINS
        if method == "percentile":
            cdf = np.cumsum(hist) / max(hist.sum(), 1)
            return float((np.searchsorted(cdf, percentile / 100) + 1) * width)
        return float((entropy_bins(hist) + 0.5) * width)


def entropy_bins(hist: np.ndarray, levels: int = QMAX + 1) -> int:
    """TensorRT's entropy calibration: the clip bin i (>= levels) minimising KL(P || Q), P the histogram
    clipped at i (outliers folded into the last bin), Q P quantised to `levels` bins and expanded back."""
    hist = hist.astype(np.float64)
    best, best_kl = len(hist), np.inf
    for i in range(levels, len(hist) + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nonzero = (hist[:i] != 0).astype(np.float64)
        edges = np.linspace(0, i, levels + 1).astype(int)
        sums = np.add.reduceat(hist[:i], edges[:-1])
        counts = np.add.reduceat(nonzero, edges[:-1])
        per_bin = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        q = np.repeat(per_bin, np.diff(edges)) * nonzero
        if p.sum() == 0 or q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        support = p > 0
        if (q[support] == 0).any():
            continue
        kl = float(np.sum(p[support] * np.log(p[support] / q[support])))
        if kl < best_kl:
            best, best_kl = i, kl
    return best - 1


# ---- graph rewriting --------------------------------------------------------------------------------


def flat_name(name: str) -> str:
    """An ONNX node or tensor name as the prefix of the names a rewrite adds: /vision/layers.0/x -> vision_layers.0_x."""
    return name.strip("/").replace("/", "_")


def quantize_weight(w: np.ndarray, axis: int, qmax: int = QMAX) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (values in ±qmax) -> (int8 weight, float32 scales)."""
    reduce = tuple(d for d in range(w.ndim) if d != axis)
    scales = (np.abs(w).max(axis=reduce) / qmax).astype(np.float32)
    scales = np.where(scales > 0, scales, np.float32(1.0))
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scales.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scales


def insert_qdq(model, targets: list[QuantTarget], thresholds: dict[str, float], weight_qmax: int = QMAX) -> None:
    """Rewrite model in place: int8 weights + DQ, and one Q/DQ pair per calibrated activation tensor."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    new_inits, new_nodes = [], {}  # new_nodes: node name -> nodes to put before it
    dq_of: dict[str, str] = {}
    for t in targets:
        before = new_nodes.setdefault(t.node, [])
        if t.activation not in dq_of:
            base = flat_name(t.activation)
            scale = max(thresholds[t.activation], 1e-8) / QMAX
            new_inits += [
                numpy_helper.from_array(np.array(scale, np.float32), f"{base}_act_scale"),
                numpy_helper.from_array(np.array(0, np.int8), f"{base}_act_zero"),
            ]
            before += [
                helper.make_node("QuantizeLinear", [t.activation, f"{base}_act_scale", f"{base}_act_zero"],
                                 [f"{base}_q"], name=f"{base}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_act_scale", f"{base}_act_zero"],
                                 [f"{base}_dq"], name=f"{base}_DequantizeLinear"),
            ]
            dq_of[t.activation] = f"{base}_dq"
        w = numpy_helper.to_array(inits[t.weight])
        q, scales = quantize_weight(w, t.axis, weight_qmax)
        wname = t.weight.replace("/", "_")
        new_inits += [
            numpy_helper.from_array(q, f"{wname}_int8"),
            numpy_helper.from_array(scales, f"{wname}_scale"),
            numpy_helper.from_array(np.zeros_like(scales, dtype=np.int8), f"{wname}_zero"),
        ]
        before.append(helper.make_node("DequantizeLinear", [f"{wname}_int8", f"{wname}_scale", f"{wname}_zero"],
                                       [f"{wname}_dq"], name=f"{wname}_DequantizeLinear", axis=t.axis))
    by_name = {t.node: t for t in targets}
    nodes = []
    for node in model.graph.node:
        if node.name in by_name:
            t = by_name[node.name]
            nodes += new_nodes[node.name]
            node.input[0], node.input[1] = dq_of[t.activation], f"{t.weight.replace('/', '_')}_dq"
        nodes.append(node)
    # a Q/DQ pair must come after its tensor's producer and before its first reader: producers precede
    # readers in a topologically sorted graph, and the pair went in front of the first quantized reader
    replace_nodes(model, nodes, new_inits)


def replace_nodes(model, nodes: list, new_inits: list) -> None:
    """The graph's nodes become `nodes`; its initializers, those of the old and `new_inits` that a node still reads."""
    used = {i for n in nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + [i for i in new_inits if i.name in used])

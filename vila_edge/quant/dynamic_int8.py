"""Per-token dynamic int8 activations for the cpu path, in standard ONNX ops that ONNX Runtime's CPU provider runs with
its integer GEMM: each quantized MatMul reads its input row by row at that row's own scale, computed as it runs,

    s = max(|x|, last axis) / 127;  q = uint8(clip(round(x / s), ±127) + 128);
    y = float(MatMulInteger(q, W_q, a_zero_point 128)) * s * w_scale

(q is stored offset by 128 with one scalar zero point: ONNX Runtime's integer GEMM is fast for u8 × s8 and several
times slower for s8 × s8; with 7-bit weights, u8 × s8 pairs cannot saturate int16), so a token with outliers (the high-norm tokens trained ViTs grow) no longer sets the scale of every other token, and
nothing is calibrated for it. The weights are the static scheme's (int8 per output channel). TensorRT's plans keep the
static per-tensor Q/DQ (what its INT8 kernels fuse); this graph is ONNX Runtime's only.
"""

import numpy as np

from .int8 import QuantTarget, flat_name, quantize_weight, replace_nodes


def row_quantize(activation: str, opset: int) -> tuple[list, str, str]:
    """The nodes that quantize `activation` row by row: (them, the uint8 tensor, the per-row scale)."""
    from onnx import TensorProto, helper

    a = flat_name(activation) + "_dyn"
    axes = {} if opset >= 18 else {"axes": [-1]}  # ReduceMax took its axes as an input from opset 18
    nodes = [
        helper.make_node("Abs", [activation], [f"{a}_abs"], name=f"{a}_Abs"),
        helper.make_node("ReduceMax", [f"{a}_abs"] + (["dyn_last"] if opset >= 18 else []), [f"{a}_max"],
                         name=f"{a}_ReduceMax", keepdims=1, **axes),
        helper.make_node("Max", [f"{a}_max", "dyn_eps"], [f"{a}_top"], name=f"{a}_Max"),
        helper.make_node("Div", [f"{a}_top", "dyn_qmax"], [f"{a}_scale"], name=f"{a}_Scale"),
        helper.make_node("Div", [activation, f"{a}_scale"], [f"{a}_div"], name=f"{a}_Div"),
        helper.make_node("Round", [f"{a}_div"], [f"{a}_round"], name=f"{a}_Round"),
        helper.make_node("Clip", [f"{a}_round", "dyn_lo", "dyn_hi"], [f"{a}_clip"], name=f"{a}_Clip"),
        helper.make_node("Add", [f"{a}_clip", "dyn_offset"], [f"{a}_shift"], name=f"{a}_Shift"),
        helper.make_node("Cast", [f"{a}_shift"], [f"{a}_q"], name=f"{a}_Cast", to=TensorProto.UINT8),
    ]
    return nodes, f"{a}_q", f"{a}_scale"


def dynamic_names(matmul: str) -> dict[str, str]:
    """What insert_dynamic names the int8 rewrite of MatMul node `matmul`: its MatMulInteger node, int8 weight, scale."""
    base = flat_name(matmul)
    return {"node": f"{base}_MatMulInteger", "wq": f"{base}_wq", "wscale": f"{base}_wscale"}


def insert_dynamic(model, targets: list[QuantTarget], weight_qmax: int) -> None:
    """Rewrite model in place: every MatMul in `targets` on per-token dynamic int8 (Convs stay float)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    by_node = {t.node: t for t in targets if t.axis == 1}  # MatMul weights [K, N]; a Conv (axis 0) stays float
    constants = {"dyn_qmax": np.float32(127), "dyn_eps": np.float32(1e-8), "dyn_lo": np.float32(-127),
                 "dyn_hi": np.float32(127), "dyn_last": np.array([-1], np.int64), "dyn_offset": np.float32(128),
                 "dyn_zero": np.uint8(128)}
    new_inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    nodes, rows_of = [], {}  # rows_of: activation -> (its uint8 tensor, its per-row scale), shared by q/k/v
    for node in model.graph.node:
        t = by_node.get(node.name)
        if t is None:
            nodes.append(node)
            continue
        if t.activation not in rows_of:
            quantize, q_name, scale_name = row_quantize(t.activation, opset)
            nodes += quantize
            rows_of[t.activation] = (q_name, scale_name)
        q_in, row_scale = rows_of[t.activation]
        base, names = flat_name(t.node), dynamic_names(t.node)
        wq, w_scale = quantize_weight(numpy_helper.to_array(inits[t.weight]), 1, weight_qmax)
        new_inits += [numpy_helper.from_array(wq, names["wq"]), numpy_helper.from_array(w_scale, names["wscale"])]
        nodes += [
            helper.make_node("MatMulInteger", [q_in, names["wq"], "dyn_zero"], [f"{base}_i32"], name=names["node"]),
            helper.make_node("Cast", [f"{base}_i32"], [f"{base}_f32"], name=f"{base}_CastF", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{base}_f32", row_scale], [f"{base}_rows"], name=f"{base}_RowScale"),
            helper.make_node("Mul", [f"{base}_rows", names["wscale"]], [node.output[0]], name=f"{base}_ColScale"),
        ]
    replace_nodes(model, nodes, new_inits)

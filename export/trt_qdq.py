"""TensorRT's rules for the Q/DQ of an ONNX it builds strongly typed, checked on the graph alone (no TensorRT needed),
and the float type that plan would run in.

The rules, from onnx-tensorrt's QuantDequantLinearHelper (branch 10.1-GA, what TensorRT 10.3 parses with) and
NvInfer.h 10.3:
- zero points int8 (a uint8 one is read as int8) and all zero: "TensorRT only supports symmetric quantization";
- scales constant and positive: "Scale coefficients must all be positive";
- a scale of more than one value is per channel, which TensorRT assumes is a weight's ("Activations-quantization
  does not support per-axis quantization"): only on an initializer, with as many scales as its axis has channels;
  for our graphs axis 1 of a MatMul's [K, N] weight and axis 0 of a Conv's [O, I, kh, kw];
- a QuantizeLinear's input has its scale's type (IQuantizeLayer; from opset 19 the parser adds no cast);
- float16 scales need opset 19 (QuantizeLinear-19), and TensorRT 10.3's parser reads opsets up to 20.
A strongly typed plan gives a DequantizeLinear's output its scale's type and every other tensor the type the graph
says, so the float type of the graph's inside (its I/O aside) is the precision the plan runs in outside int8.
"""

from pathlib import Path

import numpy as np

from vila_edge.errors import CheckpointError

QDQ = ("QuantizeLinear", "DequantizeLinear")
FLOAT_NAMES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}  # onnx.TensorProto element types
MIN_OPSET_FP16_SCALES, MAX_OPSET = 19, 20
WEIGHT_AXIS = {"MatMul": -1, "Conv": 0}  # the output-channel axis of the weight (input 1) of each op


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def tensor_types(model) -> dict[str, int]:
    """Every tensor's element type: inferred, and the initializers' own."""
    from onnx import shape_inference

    from .vision_onnx import put_back_weights, set_aside_weights

    kept = set_aside_weights(model)  # shape inference serializes the graph, which protobuf caps at 2 GB
    try:
        inferred = shape_inference.infer_shapes(model).graph
    finally:
        put_back_weights(model, kept)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.input, *inferred.value_info, *inferred.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def plan_float_type(model, types: dict[str, int] | None = None) -> str:
    """The float type(s) of the tensors inside the graph, e.g. "float16"; mixed ones joined with "+"."""
    types = tensor_types(model) if types is None else types
    io = {v.name for v in (*model.graph.input, *model.graph.output)}
    found = {FLOAT_NAMES[t] for name, t in types.items() if t in FLOAT_NAMES and name not in io}
    return "+".join(sorted(found)) or "none"


def _axis(node) -> int:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)


def _node_problems(node, consts: dict, types: dict, readers: dict, opset: int) -> list[str]:
    zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    scale = consts.get(node.input[1])
    if zero is None or scale is None:
        return ["scale and zero point must be constants (a missing zero point means uint8)"]
    found = []
    if zero.dtype != np.int8 or zero.any() or zero.size != scale.size:
        found.append(f"zero point must be int8 zeros, one per scale: it is {zero.dtype} {zero.shape}, "
                     f"{int(np.count_nonzero(zero))} non-zero")
    if not (np.isfinite(scale) & (scale > 0)).all():
        found.append(f"scales must be positive: {int((~(scale > 0)).sum())} of {scale.size} are not")
    if scale.dtype != np.float32 and opset < MIN_OPSET_FP16_SCALES:
        found.append(f"{scale.dtype} scales need opset {MIN_OPSET_FP16_SCALES}, the graph is opset {opset}")
    if node.op_type == "QuantizeLinear" and types.get(node.input[0]) != types.get(node.input[1]):
        names = [FLOAT_NAMES.get(types.get(i), "unknown") for i in node.input[:2]]
        found.append(f"input is {names[0]} and scale {names[1]}: TensorRT's quantize needs them equal")
    if scale.size > 1:
        found += _per_channel_problems(node, consts.get(node.input[0]), scale, readers)
    return found


def _per_channel_problems(node, data: np.ndarray | None, scale: np.ndarray, readers: dict) -> list[str]:
    if data is None:
        return [f"{scale.size} scales on an activation: TensorRT quantizes activations per tensor"]
    axis, rank = _axis(node), data.ndim
    if not -rank <= axis < rank:
        return [f"axis {axis} is out of range for a rank-{rank} weight"]
    if data.shape[axis] != scale.size or scale.ndim != 1:
        return [f"{scale.size} scales for {data.shape[axis]} channels on axis {axis}"]
    found = []
    for reader, slot in readers.get(node.output[0], []):
        want = WEIGHT_AXIS.get(reader.op_type)
        if slot == 1 and want is not None and axis % rank != want % rank:
            found.append(f"axis {axis} of the weight of {reader.op_type} {reader.name}: its output channels are on axis {want % rank}")
    return found


def qdq_problems(model, float_type: str | None = None) -> list[str]:
    """What TensorRT would refuse in model's Q/DQ, one line each (none: []); with float_type, also a plan that would
    run in another float type (e.g. "float16" asked of an fp32 graph)."""
    graph = model.graph
    types, consts = tensor_types(model), _constants(graph)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    readers: dict[str, list] = {}
    for n in graph.node:
        for slot, name in enumerate(n.input):
            readers.setdefault(name, []).append((n, slot))
    found = []
    if opset > MAX_OPSET:
        found.append(f"opset {opset}: TensorRT 10.3's ONNX parser reads opsets up to {MAX_OPSET}")
    if float_type is not None and (plan := plan_float_type(model, types)) != float_type:
        found.append(f"float type is {plan}: TensorRT's strongly typed plan would run in {plan}, not {float_type}")
    for n in graph.node:
        if n.op_type in QDQ:
            found += [f"{n.op_type} {n.name}: {p}" for p in _node_problems(n, consts, types, readers, opset)]
    return found


def check_for_tensorrt(path: Path, fix: str, float_type: str = "float16") -> None:
    """Refuses, in one line ending with `fix`, an ONNX TensorRT would refuse or build in another float type."""
    import onnx

    problems = qdq_problems(onnx.load(path), float_type)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{path.name}: not what TensorRT builds strongly typed in {float_type}: {problems[0]}{more}; {fix}")

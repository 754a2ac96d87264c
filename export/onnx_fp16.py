"""An ONNX graph in float16 for TensorRT: its float initializers, constants and casts, the Q/DQ scales included,
as NVIDIA ModelOpt's ONNX export writes them with `--high_precision_dtype fp16`.

A strongly typed TensorRT network runs every tensor in the type the graph gives it (a DequantizeLinear's output
in its scale's type), so this file, not a builder flag, makes the plan fp16, and the int8 plan fp16 between its
Q/DQ pairs. ONNX Runtime on a CPU keeps the fp32 files it was calibrated and measured on.

- Graph I/O stays float32 (`pixel_values` in, `image_embeds` out), with a Cast after each input and before each
  output. Every caller keeps one contract whatever the plan's precision; the casts are two elementwise passes
  TensorRT can fuse into their neighbours; and the runtime's upload stays a plain copy (an fp16 input would need
  a cast kernel on torch's stream while TensorRT runs on its own: the race of the GPU audit's item 10).
- Opset 19 (onnx's version converter, from the exporter's 17): QuantizeLinear/DequantizeLinear take float16 scales
  from opset 19, and TensorRT 10's parser reads opsets 9 to 20. The IR version stays 9 (vision_onnx.save_onnx).
- Values fp16 cannot hold: finite ones beyond ±65504 are clipped to it (a -3.4e38 mask stays a large negative
  rather than -inf), non-zero ones that would round to 0 (a 1e-30 clamp) become fp16's smallest subnormal with
  their sign, and infinities stay. Q/DQ scales are kept at or above fp16's smallest normal (6.1e-5), so none is 0
  or loses bits to a subnormal; an int8 weight behind a raised scale is re-rounded to it. Zero points stay int8.
- Casts between float types now go to float16; a Cast from an integer type stays float32 (shape arithmetic).
  LayerNormalization keeps epsilon as a float attribute and stash_type 1 (statistics in fp32, the ONNX default).
"""

import copy
from pathlib import Path

import numpy as np

OPSET = 19
FP16 = np.finfo(np.float16)
QDQ = ("QuantizeLinear", "DequantizeLinear")


def fp16_values(a: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(a as float16, how many finite values were clipped to ±65504, how many non-zero ones were kept from 0)."""
    a = np.asarray(a, np.float32)
    with np.errstate(over="ignore"):
        h = a.astype(np.float16)
    over = np.isfinite(a) & ~np.isfinite(h)
    under = (a != 0) & (h == 0)
    h[over] = np.sign(a[over]) * FP16.max
    h[under] = np.sign(a[under]) * FP16.smallest_subnormal
    return h, int(over.sum()), int(under.sum())


def fp16_scales(s: np.ndarray) -> tuple[np.ndarray, int]:
    """(Q/DQ scales as float16 within [smallest normal, max], how many were raised)."""
    s = np.asarray(s, np.float32)
    return np.clip(s, FP16.tiny, FP16.max).astype(np.float16), int((s < FP16.tiny).sum())


def _rerounded(q: np.ndarray, old: np.ndarray, new: np.ndarray, axis: int) -> np.ndarray:
    """int8 q dequantised by `old` scales, re-quantised to the `new` (larger) ones along `axis`."""
    shape = [1] * q.ndim
    if old.ndim:
        shape[axis] = -1
    ratio = (old.astype(np.float64) / new.astype(np.float64)).reshape(shape)
    return np.clip(np.rint(q * ratio), -128, 127).astype(np.int8)


def _convert_initializers(graph, stats: dict) -> None:
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    scales = {n.input[1] for n in graph.node if n.op_type in QDQ}
    for name, init in inits.items():
        if init.data_type != TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(init)
        if name in scales:
            h, raised = fp16_scales(a)
            stats["scales_raised_to_fp16_min_normal"] += raised
        else:
            h, over, under = fp16_values(a)
            stats["values_clipped_to_fp16_max"] += over
            stats["values_raised_to_fp16_min_subnormal"] += under
        init.CopyFrom(numpy_helper.from_array(h, name))
        if name in scales and raised:
            _reround_weights(graph, inits, name, a, h)


def _reround_weights(graph, inits: dict, scale: str, old: np.ndarray, new: np.ndarray) -> None:
    """The int8 weights dequantised by `scale` re-rounded to its raised fp16 values (q·old ≈ q'·new)."""
    from onnx import TensorProto, helper, numpy_helper

    for n in graph.node:
        w = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" and n.input[1] == scale else None
        if w is not None and w.data_type == TensorProto.INT8:
            axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 1)
            q = numpy_helper.to_array(w)
            w.CopyFrom(numpy_helper.from_array(_rerounded(q, old, new, axis % max(q.ndim, 1)), w.name))


def _convert_nodes(graph, types: dict, stats: dict) -> None:
    from onnx import AttributeProto, TensorProto, numpy_helper

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
    for n in graph.node:
        for a in n.attribute:
            if a.type == AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:  # Constant, ConstantOfShape
                h, over, under = fp16_values(numpy_helper.to_array(a.t))
                stats["values_clipped_to_fp16_max"] += over
                stats["values_raised_to_fp16_min_subnormal"] += under
                a.t.CopyFrom(numpy_helper.from_array(h, a.t.name))
            elif n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT and types.get(n.input[0]) in floats:
                a.i = TensorProto.FLOAT16


def _cast_io(graph) -> None:
    """float32 graph inputs and outputs kept, with a Cast to fp16 after each input and to fp32 before each output."""
    from onnx import TensorProto, helper

    inits = {i.name for i in graph.initializer}
    is_float = lambda v: v.type.tensor_type.elem_type == TensorProto.FLOAT  # noqa: E731
    ins = {v.name: f"{v.name}_fp16" for v in graph.input if is_float(v) and v.name not in inits}
    outs = {v.name: f"{v.name}_fp16" for v in graph.output if is_float(v)}
    for n in graph.node:
        for i, name in enumerate(n.input):
            n.input[i] = ins.get(name, outs.get(name, name))
        for i, name in enumerate(n.output):
            n.output[i] = outs.get(name, name)
    nodes = [helper.make_node("Cast", [name], [fp16], name=f"{name}_to_fp16", to=TensorProto.FLOAT16)
             for name, fp16 in ins.items()]
    nodes += [*graph.node, *(helper.make_node("Cast", [fp16], [name], name=f"{name}_to_fp32", to=TensorProto.FLOAT)
                             for name, fp16 in outs.items())]
    del graph.node[:]
    graph.node.extend(nodes)


def to_fp16(model, keep_input: bool = True):
    """(model converted to fp16 at opset 19, what the conversion had to move: counts per kind); keep_input False
    leaves `model` without its big weights (a 22 GB graph is then not held three times)."""
    from onnx import shape_inference, version_converter

    from .vision_onnx import put_back_weights, set_aside_weights

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    kept = set_aside_weights(model)  # both serialize the graph, which protobuf caps at 2 GB
    try:
        converted = version_converter.convert_version(model, OPSET) if opset < OPSET else copy.deepcopy(model)
        inferred = shape_inference.infer_shapes(converted).graph
    finally:
        if keep_input:
            put_back_weights(model, kept)
    put_back_weights(converted, kept)
    del kept
    model = converted
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *graph.input)}
    types.update({i.name: i.data_type for i in graph.initializer})
    stats = dict.fromkeys(("scales_raised_to_fp16_min_normal", "values_clipped_to_fp16_max",
                           "values_raised_to_fp16_min_subnormal"), 0)
    _convert_initializers(graph, stats)
    _convert_nodes(graph, types, stats)
    _cast_io(graph)
    del graph.value_info[:]  # the float32 types recorded there are stale; readers infer them again
    return model, stats


def convert_file(src: Path, dst: Path) -> dict:
    """The ONNX at src converted into dst (its weights beside it when big, as save_onnx writes them); returns the counts."""
    import onnx

    from .vision_onnx import save_onnx

    model, stats = to_fp16(onnx.load(src), keep_input=False)
    save_onnx(model, dst)
    return stats

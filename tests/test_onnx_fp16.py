"""The fp16 conversion for TensorRT (export/onnx_fp16.py) and TensorRT's Q/DQ rules walked on a graph
(export/trt_qdq.py), on small hand-made W8A8 graphs; the exported towers' files are in test_vision_w8a8.py."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vila_edge.export.onnx_fp16 import FP16, fp16_scales, fp16_values, to_fp16
from vila_edge.export.trt_qdq import plan_float_type, qdq_problems

K, N = 4, 4


def w8a8_graph(weight_scale=None, act_scale=np.float32(0.02), zero=np.int8(0), axis=1, opset=17, mask=-3.4e38, clamp=1e-30):
    """x [2, K] -> Q/DQ -> MatMul with an int8 per-channel weight -> + bias -> Max(., clamp) -> + mask -> Softmax."""
    rng = np.random.default_rng(0)
    q = rng.integers(-63, 64, (K, N)).astype(np.int8)
    ws = np.array([0.01, 0.02, 1e-7, 0.005], np.float32) if weight_scale is None else weight_scale
    init = lambda a, name: numpy_helper.from_array(np.asarray(a), name)  # noqa: E731
    inits = [init(q, "w_int8"), init(ws, "w_scale"), init(np.zeros(N, np.int8), "w_zero"),
             init(act_scale, "x_scale"), init(np.asarray(zero), "x_zero"),
             init(rng.normal(size=N).astype(np.float32), "bias"), init(np.float32(clamp), "clamp")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xdq"], name="x_dq"),
        helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zero"], ["w"], name="w_dq", axis=axis),
        helper.make_node("MatMul", ["xdq", "w"], ["y"], name="matmul"),
        helper.make_node("Add", ["y", "bias"], ["yb"], name="bias_add"),
        helper.make_node("Max", ["yb", "clamp"], ["ym"], name="clamp_max"),
        helper.make_node("Constant", [], ["mask"], value=numpy_helper.from_array(np.array([[0, 0, 0, mask]], np.float32))),
        helper.make_node("Add", ["ym", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["p"], name="softmax", axis=-1),
        helper.make_node("Cast", ["p"], ["out"], name="out_cast", to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "w8a8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_values_fp16_cannot_hold_are_clipped_or_kept_from_zero():
    a = np.array([1e-30, -1e-30, 0.0, -3.4e38, 1e6, np.inf, -np.inf, 1.0, 7e-8], np.float32)
    h, over, under = fp16_values(a)
    assert h.dtype == np.float16 and (over, under) == (2, 2)
    want = [FP16.smallest_subnormal, -FP16.smallest_subnormal, 0, -FP16.max, FP16.max, np.inf, -np.inf, 1, 2**-24]
    np.testing.assert_array_equal(h, np.array(want, np.float16))
    s, raised = fp16_scales(np.array([1e-9, 1e-4, 0.5], np.float32))
    assert raised == 1 and s.dtype == np.float16 and s[0] == FP16.tiny and (s > 0).all()


def test_the_conversion_keeps_the_function_with_fp16_inside_and_fp32_io():
    fp32 = w8a8_graph()
    fp16, moved = to_fp16(fp32)
    assert moved == {"scales_raised_to_fp16_min_normal": 1, "values_clipped_to_fp16_max": 1,
                     "values_raised_to_fp16_min_subnormal": 1}
    assert fp16.opset_import[0].version == 19 and fp16.ir_version == 9
    assert [v.type.tensor_type.elem_type for v in (*fp16.graph.input, *fp16.graph.output)] == [TensorProto.FLOAT] * 2
    ops = [n.op_type for n in fp16.graph.node]
    assert ops[0] == "Cast" and ops[-1] == "Cast" and plan_float_type(fp16) == "float16"
    inits = {i.name: numpy_helper.to_array(i) for i in fp16.graph.initializer}
    assert inits["x_zero"].dtype == inits["w_zero"].dtype == np.int8 and not inits["w_zero"].any()
    assert inits["clamp"] > 0 and inits["w_scale"].dtype == np.float16 and inits["w_scale"].min() == FP16.tiny
    # the weight behind the raised scale is re-rounded to it; the others are untouched
    q0, s0 = (numpy_helper.to_array(i) for i in fp32.graph.initializer[:2])
    q1, s1 = inits["w_int8"], inits["w_scale"].astype(np.float32)
    np.testing.assert_array_equal(np.delete(q1, 2, axis=1), np.delete(q0, 2, axis=1))
    assert np.abs(q1[:, 2] * s1[2] - q0[:, 2] * s0[2]).max() <= s1[2] / 2
    x = np.random.default_rng(1).normal(size=(2, K)).astype(np.float32)
    got, want = run(fp16, x), run(fp32, x)
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert np.isfinite(got).all() and (got[:, 3] == 0).all()  # the mask: -65504, so no NaN and still masked


def test_the_fp16_graph_meets_tensorrts_rules_and_the_fp32_one_says_its_float_type():
    fp32 = w8a8_graph()
    assert qdq_problems(fp32) == [] and plan_float_type(fp32) == "float32"
    assert qdq_problems(fp32, "float16") == [
        "float type is float32: TensorRT's strongly typed plan would run in float32, not float16"]
    assert qdq_problems(to_fp16(fp32)[0], "float16") == []


BROKEN = {  # w8a8_graph arguments -> what the walk must say
    "zero point uint8": (dict(zero=np.uint8(0)), "x_q: zero point must be int8 zeros"),
    "zero point not zero": (dict(zero=np.int8(3)), "1 non-zero"),
    "negative scale": (dict(act_scale=np.float32(-0.02)), "scales must be positive: 1 of 1"),
    "zero scale": (dict(weight_scale=np.array([0.01, 0, 0.01, 0.01], np.float32)), "w_dq: scales must be positive"),
    "axis of K": (dict(axis=0), "axis 0 of the weight of MatMul matmul: its output channels are on axis 1"),
    "axis out of range": (dict(axis=2), "axis 2 is out of range for a rank-2 weight"),
    "channels": (dict(weight_scale=np.full(3, 0.01, np.float32)), "3 scales for 4 channels on axis 1"),
    "per-channel activation": (dict(act_scale=np.full(K, 0.02, np.float32)), "4 scales on an activation"),
    "fp16 scales at opset 17": (dict(weight_scale=np.full(N, 0.01, np.float16)), "float16 scales need opset 19"),
    "opset 21": (dict(opset=21), "TensorRT 10.3's ONNX parser reads opsets up to 20"),
    "Q input fp32, scale fp16": (dict(act_scale=np.float16(0.02), opset=19), "input is float32 and scale float16"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_the_walk_names_what_tensorrt_would_refuse(case):
    kwargs, message = BROKEN[case]
    problems = qdq_problems(w8a8_graph(**kwargs))
    assert any(message in p for p in problems), problems


def test_a_cast_from_an_integer_stays_float32():
    """Shape arithmetic (int64 -> float -> int64) keeps fp32: fp16 counts exactly only to 2048."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3000, 2])],
                              [helper.make_tensor_value_info("sf", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("xf", TensorProto.FLOAT, [3000, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    casts = {n.output[0]: n.attribute[0].i for n in to_fp16(model)[0].graph.node if n.op_type == "Cast"}
    assert casts["sf_fp16"] == TensorProto.FLOAT and casts["xf_fp16"] == TensorProto.FLOAT16

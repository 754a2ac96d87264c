"""The vision tower on our own kernels (kernels/cpu/vit.h, export/vision_native.py, runtime/native_vision.py): each
kernel table against ONNX Runtime's arithmetic and numpy, the C++ layers against a numpy layer of the same W8A8 scheme,
and an engine's native tower against ONNX Runtime running the same per-token dynamic graph (the oracle)."""

import json
import math
import shutil

import numpy as np
import pytest

from vila_edge import _runtime
from vila_edge.errors import UsageError
from vila_edge.export.onnx_checks import cosine
from vila_edge.runtime.cpu import CpuEngine

KERNELS = _runtime.supported_kernels()
SHAPES = [(1, 5, 3), (9, 64, 33), (30, 72, 100), (13, 130, 48)]  # k not a multiple of 4, ragged panels, odd rows


def rng(seed=0):
    return np.random.default_rng(seed)


def ort_row_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """quant/dynamic_int8.py's nodes in ONNX Runtime: the bytes and scales the dynamic graph computes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from vila_edge.quant.dynamic_int8 import row_quantize

    nodes, q, s = row_quantize("x", 17)
    consts = {"dyn_qmax": 127, "dyn_eps": 1e-8, "dyn_lo": -127, "dyn_hi": 127, "dyn_offset": 128}
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info(q, TensorProto.UINT8, None),
                               helper.make_tensor_value_info(s, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.float32(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return tuple(sess.run(None, {"x": x}))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_the_int8_gemm_is_onnx_runtimes_arithmetic(kernels, m, k, n):
    x = (rng().standard_normal((m, k)) * 3).astype(np.float32)
    x[0, 0] = 40.0  # an outlier sets its own row's scale only
    w = rng(1).integers(-63, 64, (k, n)).astype(np.int8)
    scale, bias = rng(2).random(n).astype(np.float32) / 50, rng(3).standard_normal(n).astype(np.float32)
    q, d = ort_row_quantize(x)
    got_q, got_d = _runtime.quantize_u8(x, kernels)
    assert got_q[:, :k].tobytes() == q.tobytes() and got_d.tobytes() == d.reshape(-1).tobytes()
    assert (got_q[:, k:] == 128).all()  # the padding to a multiple of 4 is a zero
    exact = ((q.astype(np.int64) - 128) @ w.astype(np.int64)).astype(np.float32)
    want = exact * d.reshape(-1, 1) * scale + bias  # MatMulInteger, Cast, Mul (row), Mul (column), Add
    got = _runtime.vit_linear(x, w, scale, bias, kernels)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_the_float_gemm_and_the_float_parts_match_numpy(kernels, m, k, n):
    x = rng().standard_normal((m, k)).astype(np.float32)
    w, b = rng(1).standard_normal((k, n)).astype(np.float32), rng(2).standard_normal(n).astype(np.float32)
    want = x.astype(np.float64) @ w + b
    np.testing.assert_allclose(_runtime.vit_linear(x, w, None, b, kernels), want, atol=1e-4 * np.abs(want).max())
    g, beta = rng(3).standard_normal(k).astype(np.float32), rng(4).standard_normal(k).astype(np.float32)
    x64 = x.astype(np.float64) * 4 + 1
    ln = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-6) * g + beta
    np.testing.assert_allclose(_runtime.layer_norm(x64.astype(np.float32), g, beta, 1e-6, kernels), ln, atol=2e-5)
    s = x64 * 0.3
    soft = np.exp(s - s.max(1, keepdims=True))
    np.testing.assert_allclose(_runtime.softmax(x64.astype(np.float32), 0.3, kernels), soft / soft.sum(1, keepdims=True),
                               atol=1e-6)


GELUS = {
    "erf": lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2))),
    "tanh": lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
    "quick": lambda v: v / (1 + np.exp(-1.702 * v)),
}


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kind", GELUS)
def test_each_gelu_is_the_towers_own(kernels, kind):
    x = np.concatenate([np.linspace(-12, 12, 241), rng().standard_normal(30) * 3]).astype(np.float32).reshape(1, -1)
    got = _runtime.gelu(x, _runtime.GELU_KINDS[kind], kernels)
    np.testing.assert_allclose(got, GELUS[kind](x.astype(np.float64)), atol=1e-6, rtol=1e-6)


# ---- the layers -----------------------------------------------------------------------------------------------

H, HEADS, FFN, T = 48, 3, 80, 37


def random_layer(seed: int, int8: bool, layer_scale: bool) -> dict:
    r = rng(seed)
    t = {"norm1.weight": 1 + 0.1 * r.standard_normal(H), "norm1.bias": 0.1 * r.standard_normal(H),
         "norm2.weight": 1 + 0.1 * r.standard_normal(H), "norm2.bias": 0.1 * r.standard_normal(H)}
    for name, (k, n) in {"q": (H, H), "k": (H, H), "v": (H, H), "o": (H, H), "fc1": (H, FFN), "fc2": (FFN, H)}.items():
        w = r.standard_normal((k, n)) / math.sqrt(k)
        if int8:
            s = np.abs(w).max(0) / 63
            t[f"{name}.wq"], t[f"{name}.wscale"] = np.rint(w / s).astype(np.int8), s
        else:
            t[f"{name}.weight"] = w
        t[f"{name}.bias"] = 0.1 * r.standard_normal(n)
    if layer_scale:
        t["ls1"], t["ls2"] = 0.5 + r.random(H), 0.5 + r.random(H)
    return {k: v if v.dtype == np.int8 else v.astype(np.float32) for k, v in t.items()}


def numpy_linear(x, t, name):
    if f"{name}.wq" in t:
        d = np.maximum(np.abs(x).max(-1, keepdims=True), 1e-8) / 127
        q = np.clip(np.rint(x / d), -127, 127)
        return q @ t[f"{name}.wq"].astype(np.float64) * d * t[f"{name}.wscale"] + t[f"{name}.bias"]
    return x @ t[f"{name}.weight"] + t[f"{name}.bias"]


def numpy_layer(x, t, eps=1e-6):
    """The SigLIP / DINOv2 layer in float64 with the per-token dynamic int8 of quant/dynamic_int8.py."""
    def norm(v, which):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + eps) * t[f"{which}.weight"] + t[f"{which}.bias"]

    h, hd = norm(x, "norm1"), H // HEADS
    q, k, v = (numpy_linear(h, t, n).reshape(T, HEADS, hd).transpose(1, 0, 2) for n in "qkv")
    s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
    p = np.exp(s - s.max(-1, keepdims=True))
    attn = ((p / p.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(T, H)
    x = x + numpy_linear(attn, t, "o") * t.get("ls1", 1)
    f = numpy_linear(norm(x, "norm2"), t, "fc1")
    f = 0.5 * f * (1 + np.vectorize(math.erf)(f / math.sqrt(2)))
    return x + numpy_linear(f, t, "fc2") * t.get("ls2", 1)


@pytest.mark.parametrize("kernels", KERNELS)
def test_the_engines_layers_are_the_scheme_computed_in_numpy(kernels):
    """An int8 layer with layer scales (DINOv2's), then a layer the mixed precision kept float (SigLIP's shape)."""
    layers = [random_layer(1, int8=True, layer_scale=True), random_layer(2, int8=False, layer_scale=False)]
    vit = _runtime.VitEngine(hidden=H, heads=HEADS, intermediate=FFN, gelu=_runtime.GELU_KINDS["erf"], threads=2,
                             kernels=kernels)
    for t in layers:
        vit.add_layer(t, 1e-6, 1e-6)
    x = rng(5).standard_normal((2, T, H)).astype(np.float32)
    got = vit.forward(x)
    for i in range(2):
        want = x[i].astype(np.float64)
        for t in layers:
            want = numpy_layer(want, {k: v.astype(np.float64) if v.dtype != np.int8 else v for k, v in t.items()})
        assert cosine(got[i : i + 1], want[None]).min() > 0.9999
        np.testing.assert_allclose(got[i], want, atol=0.02 * np.abs(want).max())
    assert vit.layers == 2 and set(vit.profile) >= {"int8 gemm", "fp32 gemm", "attention", "norm", "gelu"}


def test_a_layer_of_the_wrong_shape_is_refused():
    vit = _runtime.VitEngine(hidden=H, heads=HEADS, intermediate=FFN, gelu=0)
    t = random_layer(1, True, False)
    t["fc1.wq"] = t["fc1.wq"][:, :-16]
    with pytest.raises(ValueError, match="fc1"):
        vit.add_layer(t, 1e-6, 1e-6)
    t = random_layer(1, True, False)
    t["q.wq"][0, 0] = 100  # 8-bit: the AVX2 u8 × s8 pairs would saturate
    with pytest.raises(ValueError, match="63"):
        vit.add_layer(t, 1e-6, 1e-6)


# ---- an engine's tower ----------------------------------------------------------------------------------------


def tower_pixels(engine: CpuEngine, n=3) -> np.ndarray:
    size = engine.manifest["vision"]["image_size"]
    return rng(7).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


def test_a_cpu_engine_runs_its_tower_natively_as_onnx_runtime_does(caption_engine):
    spec = json.loads((caption_engine / "manifest.json").read_text())["vision"]
    assert spec["native"]["probe_cosine"] >= 0.999 and spec["native"]["head_file"]
    assert set(spec["native"]["probe_ms"]) == {"native", "ort"}  # build-engine timed both
    native = CpuEngine(caption_engine, threads=2, vision_backend="native")
    ort = CpuEngine(caption_engine, vision_backend="ort")
    assert (native.vision_backend, ort.vision_backend) == ("native", "ort")
    assert CpuEngine(caption_engine, kernels="ref", vision_backend="native").vision_backend == "native"
    pixels = tower_pixels(native)
    got, want = native.encode_images(pixels), ort.encode_images(pixels)
    assert got.shape == want.shape
    assert cosine(got, want).min() >= 0.999, cosine(got, want)


@pytest.mark.parametrize("native_ms,ort_ms,kernels,default", [(10, 20, "", "native"), (20, 10, "", "ort"),
                                                            (10, 20, "ref", "ort"), (None, None, "", "native")])
def test_the_default_is_the_backend_build_engine_timed_faster(caption_engine, tmp_path, native_ms, ort_ms, kernels,
                                                               default):
    """A narrow tower (the demo's) spends its time in attention and the graph's ends, where ONNX Runtime alone is as
    fast; the portable kernels (ref, NEON's for now) never are. An engine built before the timing: the kernel table decides."""
    engine = tmp_path / "engine"
    shutil.copytree(caption_engine, engine)
    manifest = json.loads((engine / "manifest.json").read_text())
    if native_ms is None:
        del manifest["vision"]["native"]["probe_ms"]
    else:
        manifest["vision"]["native"]["probe_ms"] = {"native": native_ms, "ort": ort_ms}
    (engine / "manifest.json").write_text(json.dumps(manifest))
    assert CpuEngine(engine, kernels=kernels).vision_backend == default


def test_vision_backend_native_where_the_engine_has_none_names_the_fix(caption_engine, tmp_path, cli):
    engine = tmp_path / "engine"
    shutil.copytree(caption_engine, engine)
    manifest = json.loads((engine / "manifest.json").read_text())
    del manifest["vision"]["native"]  # an engine built before the native tower, or for a tower it does not run
    (engine / "manifest.json").write_text(json.dumps(manifest))
    assert CpuEngine(engine).vision_backend == "ort"
    with pytest.raises(UsageError, match="--vision-backend ort"):
        CpuEngine(engine, vision_backend="native")
    code, _, err = cli("caption", engine, "--vision-backend", "native", "--prompt", "Hi.", "--max-new-tokens", 1)
    assert code != 0 and "--vision-backend ort" in err and "Traceback" not in err

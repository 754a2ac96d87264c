"""W8A8 vision ONNX: graph structure, fp32 export vs an independent reference, int8 accuracy, CLI and errors."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_model import independent_image_embeds

from vila_edge.checkpoint import load_checkpoint
from vila_edge.demo import write_sample_image
from vila_edge.export.trt_qdq import plan_float_type, qdq_problems
from vila_edge.export.vision_w8a8 import cosine, pixels_of, quantize_vision
from vila_edge.formats import VISION_FP16_FILE as FP16_FILE
from vila_edge.formats import VISION_FP32_FILE as FP32_FILE
from vila_edge.formats import VISION_RECORD_FILE as RECORD_FILE
from vila_edge.formats import VISION_W8A8_DYNAMIC_FILE
from vila_edge.formats import VISION_W8A8_FILE as W8A8_FILE
from vila_edge.formats import VISION_W8A8_FP16_FILE as W8A8_FP16_FILE
from vila_edge.quant.options import VisionQuantOptions
from vila_edge.scenes import generated_images

KINDS = {  # name -> (tiny() arguments, NVILA token order)
    "vila15": (dict(projector_type="mlp_downsample", arch="llama"), False),
    "nvila": (dict(projector_type="mlp_downsample", arch="qwen2"), True),
    "mlp2x": (dict(projector_type="mlp2x_gelu", arch="llama"), False),
}


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    done = {}

    def make(kind):
        if kind not in done:
            root = tiny(**KINDS[kind][0])
            out = tmp_path_factory.mktemp(f"vision-{kind}")
            with pytest.warns(UserWarning, match="generated images"):
                record = quantize_vision(load_checkpoint(root), out, VisionQuantOptions(n_images=12), log=lambda m: None)
            done[kind] = (root, out, record)
        return done[kind]

    return make


def held_out_pixels(root, n=4):
    """Images no calibration saw: noise photos of odd sizes (calibration used drawn scenes)."""
    rng = np.random.default_rng(123)
    from PIL import Image

    images = [Image.fromarray((rng.random((60 + 17 * i, 90, 3)) * 255).astype(np.uint8)) for i in range(n)]
    return pixels_of(load_checkpoint(root), images)


def run(path, pixels):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": pixels})[0]


def weight_input(model, node):
    """The initializer a MatMul/Conv reads as its weight (directly or through an Identity), else None."""
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    name = node.input[1]
    if name in producer and producer[name].op_type == "Identity":
        name = producer[name].input[0]
    return name if name in inits else None


def test_every_weighted_matmul_has_qdq_with_per_channel_weight_scales(exported):
    _, out, record = exported("vila15")
    fp32, w8a8 = onnx.load(out / FP32_FILE), onnx.load(out / W8A8_FILE)
    assert w8a8.ir_version == 9 and w8a8.opset_import[0].version == 17
    weighted = [n.name for n in fp32.graph.node if n.op_type in ("MatMul", "Conv") and weight_input(fp32, n)]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    producer = {o: n for n in w8a8.graph.node for o in n.output}
    quantized = []
    for node in (n for n in w8a8.graph.node if n.op_type in ("MatMul", "Conv")):
        weight_dq, act_dq = producer.get(node.input[1]), producer.get(node.input[0])
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear":
            assert weight_input(w8a8, node) is None  # only the attention products (q·k, p·v) stay float
            continue
        quantized.append(node.name)
        q, scale = inits[weight_dq.input[0]], inits[weight_dq.input[1]]
        axis = next(a.i for a in weight_dq.attribute if a.name == "axis")
        assert q.dtype == np.int8 and np.abs(q).max() <= 63  # 7-bit range by default
        assert axis == (1 if node.op_type == "MatMul" else 0) and scale.shape == (q.shape[axis],)
        assert act_dq.op_type == "DequantizeLinear" and producer[act_dq.input[0]].op_type == "QuantizeLinear"
        assert inits[act_dq.input[1]].shape == ()  # per-tensor activation scale
    assert sorted(quantized) == sorted(weighted) and len(weighted) == record["quantized_nodes"] > 0
    for node in w8a8.graph.node:  # norms, softmax, GELU and bias adds read float tensors
        if node.op_type in ("LayerNormalization", "Softmax", "Erf", "Tanh", "Add"):
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)


def onnx_and_reference(kind, exported, onnx_file):
    """(the ONNX's image_embeds, the independent fp32 reference's) on held-out pixels."""
    root, out, _ = exported(kind)
    pixels = held_out_pixels(root)
    want = independent_image_embeds(root, torch.from_numpy(pixels), nvila=KINDS[kind][1]).numpy()
    return run(out / onnx_file, pixels), want


@pytest.mark.parametrize("kind", list(KINDS))
def test_fp32_export_matches_the_independent_reference(kind, exported):
    """Also the token order: column-major blocks for VILA1.5's mlp_downsample, row-major for NVILA."""
    got, want = onnx_and_reference(kind, exported, FP32_FILE)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", list(KINDS))
def test_int8_agrees_with_fp32_on_unseen_images(kind, exported):
    got, want = onnx_and_reference(kind, exported, W8A8_FILE)
    assert cosine(got, want).min() >= 0.99
    record = exported(kind)[2]
    assert record["held_out"]["cosine_min"] >= 0.99  # the record's own held-out set (generated scenes)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_tensorrt_fp16_files_agree_with_the_fp32_ones(kind, exported):
    """calibration.json's check (ONNX Runtime on the CPU, the held-out scenes), then the independent fp32 reference
    on unseen noise photos."""
    _, _, record = exported(kind)
    trt = record["tensorrt_fp16"]
    assert trt["fp16_vs_fp32"]["cosine_min"] > 0.9999 and trt["w8a8_fp16_vs_w8a8"]["cosine_min"] > 0.999
    for check in (trt["fp16_vs_fp32"], trt["w8a8_fp16_vs_w8a8"]):  # what ORT could not run in fp16 is said
        assert check["ort_ran_in_fp32"] == sorted(check["ort_ran_in_fp32"]) and "Cast" not in check["ort_ran_in_fp32"]
        assert check["conversion"]["scales_raised_to_fp16_min_normal"] == check["conversion"]["values_clipped_to_fp16_max"] == 0
    got, want = onnx_and_reference(kind, exported, FP16_FILE)
    assert cosine(got, want).min() > 0.9999
    got, want = onnx_and_reference(kind, exported, W8A8_FP16_FILE)
    assert cosine(got, want).min() >= 0.99


def test_the_tensorrt_files_are_fp16_inside_fp32_outside_and_meet_tensorrts_qdq_rules(exported):
    _, out, _ = exported("vila15")
    w8a8, w8a8_fp16, fp16 = (onnx.load(out / f) for f in (W8A8_FILE, W8A8_FP16_FILE, FP16_FILE))
    for m in (w8a8_fp16, fp16):
        assert m.ir_version == 9 and m.opset_import[0].version == 19
        io = [(v.name, v.type.tensor_type.elem_type) for v in (*m.graph.input, *m.graph.output)]
        assert io == [("pixel_values", onnx.TensorProto.FLOAT), ("image_embeds", onnx.TensorProto.FLOAT)]
        assert {i.data_type for i in m.graph.initializer} <= {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
                                                              onnx.TensorProto.INT64}
        assert plan_float_type(m) == "float16" and qdq_problems(m, "float16") == []
    # the same quantization: the int8 weights as they were, the scales within fp16's rounding
    before = {i.name: onnx.numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in w8a8_fp16.graph.initializer}
    assert before.keys() == after.keys()
    for name, a in before.items():
        if a.dtype == np.int8:
            np.testing.assert_array_equal(after[name], a)
        elif name.endswith("_scale"):
            np.testing.assert_allclose(after[name].astype(np.float32), a, rtol=2**-11)
    # the GPU audit's item 5: the fp32 W8A8 file meets the Q/DQ rules, but its plan would run in fp32
    assert qdq_problems(w8a8) == [] and plan_float_type(w8a8) == "float32"
    assert qdq_problems(w8a8, "float16") == [
        "float type is float32: TensorRT's strongly typed plan would run in float32, not float16"]


def test_dynamic_batch(exported):
    root, out, _ = exported("vila15")
    one, three = run(out / W8A8_FILE, held_out_pixels(root, 1)), run(out / W8A8_FILE, held_out_pixels(root, 3))
    assert one.shape[0] == 1 and three.shape[0] == 3 and one.shape[1:] == three.shape[1:]


def test_calibration_record(exported):
    _, out, record = exported("vila15")
    saved = json.loads((out / RECORD_FILE).read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["media"] == "generated" and saved["calibration_images"] == 12 and saved["method"] == "mse"
    assert [layer["layer"] for layer in saved["layers"]] == [0, 1]  # select_layer -2 of 3: the last never runs
    assert all(0.9 < layer["cosine"] <= 1.0 + 1e-9 for layer in saved["layers"])
    assert saved["ranges"] and all(v > 0 for v in saved["ranges"].values())
    assert saved["held_out"]["fp32_onnx_max_abs_error"] < 1e-4


def test_quantize_writes_vision_and_caption_runs_it(tiny, tmp_path, cli):
    frames = tmp_path / "frames"
    for i in range(3):
        write_sample_image(frames / f"{i}.png", size=90, seed=i)
    out = tmp_path / "q"
    code, stdout, err = cli("quantize", tiny(), "-o", out, "--group-size", 32, "--n-samples", 2, "--seqlen", 32,
                            "--quiet", "--calib-media", frames, "--vision-calib-images", 3)
    assert code == 0, err
    assert "vision W8A8" in stdout and "generated" not in err
    record = json.loads((out / "vision" / RECORD_FILE).read_text())
    assert record["media"] == str(frames) and record["calibration_images"] == 3
    assert record["held_out"]["source"] == "generated"  # 3 frames are too few to hold some out: drawn scenes
    report = json.loads((out / "quant_report.json").read_text())
    assert report["vision"]["held_out"]["cosine_mean"] >= 0.99
    assert report["vision"]["tensorrt_fp16"]["fp16_vs_fp32"]["cosine_min"] > 0.9999
    assert sorted(f.name for f in (out / "vision").iterdir()) == [
        RECORD_FILE, FP16_FILE, FP32_FILE, W8A8_FILE, VISION_W8A8_DYNAMIC_FILE, W8A8_FP16_FILE]
    code, stdout, err = cli("caption", out, "--image", frames / "0.png", "--prompt", "Describe.", "--backend", "onnx",
                            "--conv-mode", "vicuna_v1", "--max-new-tokens", 4, "--format", "jsonl")
    assert code == 0, err
    answer = json.loads(stdout)
    assert answer["backend"] == "onnx" and answer["image_tokens"] == 9 and len(answer["token_ids"]) > 0


def test_media_with_enough_images_gives_the_held_out_ones_too(tmp_path):
    from vila_edge.export.vision_w8a8 import calibration_images

    frames = tmp_path / "frames"
    for i in range(14):
        write_sample_image(frames / f"{i:02d}.png", size=40 + i, seed=i)  # each frame its own size: told apart below
    calib, source, held, held_source = calibration_images(VisionQuantOptions(media=frames, n_images=8, held_out=4))
    assert (len(calib), len(held), source, held_source) == (8, 4, str(frames), str(frames))
    sizes = [im.size[0] for im in calib], [im.size[0] for im in held]
    assert not set(sizes[0]) & set(sizes[1]) and sizes[1] == [42, 45, 48, 51]  # every third of 12, none calibrated


def test_unreadable_media_writes_nothing(tiny, tmp_path, cli):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "q"
    code, _, err = cli("quantize", tiny(), "-o", out, "--group-size", 32, "--calib-media", bad)
    assert code == 1 and "broken.png: not a readable image" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".q.tmp-*"))


def test_caption_onnx_backend_needs_the_export(tiny, cli):
    code, _, err = cli("caption", tiny(), "--prompt", "Hi", "--backend", "onnx", "--max-new-tokens", 2)
    assert code == 1 and "vision_w8a8.onnx: missing; quantize with --vision w8a8" in err


def test_generated_images_are_deterministic():
    a, b = generated_images(2, seed=5), generated_images(2, seed=5)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))

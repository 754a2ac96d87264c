"""VILA1.5-3B-S2, NVILA (dynamic_s2) and NVILA-Lite (dynamic) through the reference pipeline, against the
independent implementation written from the upstream code (tests/upstream_vila.py) on tiny random checkpoints
in the published layouts (tests/tiny_nvila.py): tiles, merged features, blocks, prompt text, then captions."""

import json
from pathlib import Path

import numpy as np
import pytest
import upstream_vila as uv
from PIL import Image
from tiny_nvila import build_all

from vila_edge.caption import Captioner
from vila_edge.checkpoint import load_checkpoint
from vila_edge.model.vlm import VilaModel

LAYOUTS = ("s2", "nvila", "nvila_lite")
CONV = {"s2": "vicuna_v1", "nvila": "qwen2", "nvila_lite": "qwen2"}


def image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, tokenizer_dirs):
    return build_all(tmp_path_factory.mktemp("multiscale"), tokenizer_dirs)


@pytest.fixture(scope="module")
def captioners(layouts):
    """(folder, Captioner over the fp32 torch reference) per layout, with max_tiles left to the checkpoint."""
    out = {}
    for name in LAYOUTS:
        ckpt = load_checkpoint(layouts[name])
        out[name] = (layouts[name], ckpt, VilaModel(ckpt, dtype="float32"))
    return out


def blocks_of(encoded):
    return [np.asarray(b.float()) for b in encoded.blocks]


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("size", [(168, 112), (112, 168), (70, 70), (300, 90)])
def test_one_image_encodes_as_upstream(captioners, name, size):
    folder, ckpt, model = captioners[name]
    im = image(*size, seed=sum(size))
    got = Captioner(ckpt, model, CONV[name]).encode([im])
    want = uv.encode_image_upstream(folder, im)
    assert got.tower_passes == want.tower_passes
    assert [b.shape for b in blocks_of(got)] == [tuple(b.shape) for b in want.blocks]
    for mine, theirs in zip(blocks_of(got), want.blocks):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", LAYOUTS)
def test_several_images_are_never_tiled(captioners, name):
    folder, ckpt, model = captioners[name]
    ims = [image(168, 112, 1), image(90, 140, 2)]
    got = Captioner(ckpt, model, CONV[name]).encode(ims)
    want = uv.encode_images_upstream(folder, ims)
    assert got.tower_passes == want.tower_passes and got.tiles_per_image == [0, 0]
    for mine, theirs in zip(blocks_of(got), want.blocks):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=0, atol=2e-5)


@pytest.mark.parametrize("max_tiles", [2, 4, 6, 12])
def test_max_tiles_caps_the_grid_as_vilas_max_tiles(captioners, max_tiles):
    for name in ("nvila", "nvila_lite"):
        folder, ckpt, model = captioners[name]
        im = image(300, 130, max_tiles)
        got = Captioner(ckpt, model, CONV[name], max_tiles=max_tiles).encode([im])
        want = uv.encode_image_upstream(folder, im, max_tiles=max_tiles)
        assert got.tower_passes == want.tower_passes, name
        for mine, theirs in zip(blocks_of(got), want.blocks):
            np.testing.assert_allclose(mine, theirs.numpy(), rtol=0, atol=2e-5)


def test_max_tiles_1_is_one_tile_as_with_tiling_off(captioners):
    """NVILA at --max-tiles 1: one tower pass, the features once per scale (the untiled path of a multi-image prompt)."""
    folder, ckpt, model = captioners["nvila"]
    a, b = image(168, 112, 5), image(90, 140, 6)
    got = Captioner(ckpt, model, "qwen2", max_tiles=1).encode([a])
    want = uv.encode_images_upstream(folder, [a, b])
    assert got.tower_passes == 1
    np.testing.assert_allclose(blocks_of(got)[0], want.blocks[0].numpy(), rtol=0, atol=2e-5)


def test_a_lite_image_puts_an_image_tag_per_tile_in_the_prompt(captioners):
    folder, ckpt, model = captioners["nvila_lite"]
    captioner = Captioner(ckpt, model, "qwen2")
    im = image(168, 112)
    want = uv.encode_image_upstream(folder, im)
    tiles = captioner.encode([im]).tiles_per_image
    from vila_edge.prompt import user_turn

    assert user_turn("Describe.", 1, ckpt.family.image_text, tiles) == want.image_text[0] + "Describe."
    assert user_turn("<image>Describe.", 1, ckpt.family.image_text, tiles) == want.image_text[0] + "Describe."


@pytest.mark.parametrize("name", LAYOUTS)
def test_caption_runs_each_layout_and_counts_its_image_tokens(layouts, name, cli, tmp_path):
    image(168, 112).save(tmp_path / "frame.png")
    code, out, err = cli("caption", layouts[name], "--image", tmp_path / "frame.png", "--prompt", "Describe the image.",
                         "--max-new-tokens", 3, "--temperature", 0, "--format", "jsonl", "--conv-mode", CONV[name])
    assert code == 0, err
    want = uv.encode_image_upstream(layouts[name], Image.open(tmp_path / "frame.png"))
    assert json.loads(out)["image_tokens"] == sum(len(b) for b in want.blocks)


def test_max_tiles_on_the_command_line(layouts, cli, tmp_path):
    image(300, 130).save(tmp_path / "wide.png")
    args = ("--image", tmp_path / "wide.png", "--prompt", "Describe.", "--max-new-tokens", 1, "--format", "jsonl",
            "--conv-mode", "qwen2")
    tokens = {}
    for n in (1, 12):
        code, out, err = cli("caption", layouts["nvila_lite"], *args, "--max-tiles", n)
        assert code == 0, err
        tokens[n] = json.loads(out)["image_tokens"]
    assert tokens[1] < tokens[12]
    code, _, err = cli("caption", layouts["nvila_lite"], *args, "--max-tiles", 0)
    assert code == 2 and "--max-tiles 0: at least 1" in err
    code, _, err = cli("caption", layouts["s2"], *args[:-1], "vicuna_v1", "--max-tiles", 4)
    assert code == 2 and "does not tile its images (S2: fixed scales)" in err


def test_inspect_reports_tiles_and_tokens_per_image(layouts, cli):
    want = {"s2": ([5, 5], [9, 9]), "nvila": ([14, 17], [36, 48]), "nvila_lite": ([1, 13], [4, 52])}
    for name, (passes, tokens) in want.items():
        code, out, err = cli("inspect", layouts[name], "--format", "json")
        assert code == 0, err
        tiling = json.loads(out)["tiling"]
        assert (tiling["tower_passes"], tiling["tokens"]) == (passes, tokens), name
    code, out, _ = cli("inspect", layouts["nvila"], "--max-tiles", 1, "--format", "json")
    assert json.loads(out)["tiling"]["tokens"] == [4, 4]
    code, out, _ = cli("inspect", layouts["nvila"])
    assert "36 to 48 per image alone in its prompt, 14 to 17 tower passes" in out


def test_nvila_lite_tiles_run_on_the_cpu_engine_without_torch(layouts, tmp_path, cli):
    """quantize (AWQ calibrated on tiled captioning exchanges, W8A8 tower) -> build-engine cpu -> caption, with
    torch and transformers unimportable: each tile through the W8A8 ONNX, a tag per tile, as the reference does."""
    from conftest import QUICK_QUANT, cli_without_quantize_extra

    (tmp_path / "media").mkdir()
    for i in range(3):
        image(168, 112 + 20 * i, i).save(tmp_path / "media" / f"{i}.png")
    code, _, err = cli("quantize", layouts["nvila_lite"], "-o", tmp_path / "q", "--group-size", 32, *QUICK_QUANT,
                       "--calib-media", tmp_path / "media")
    assert code == 0, err
    code, _, err = cli("build-engine", tmp_path / "q", "-o", tmp_path / "cpu", "--target", "cpu")
    assert code == 0, err
    args = ["--image", str(tmp_path / "media/0.png"), "--prompt", "Describe.", "--max-new-tokens", "2", "--format", "jsonl"]
    (code, out, err), (code1, out1, err1) = cli_without_quantize_extra(
        ["caption", str(tmp_path / "cpu"), *args], ["caption", str(tmp_path / "cpu"), *args, "--max-tiles", "1"])
    assert code == 0 and code1 == 0, err + err1
    want = uv.encode_image_upstream(layouts["nvila_lite"], Image.open(tmp_path / "media/0.png"))
    assert json.loads(out)["image_tokens"] == sum(len(b) for b in want.blocks) > json.loads(out1)["image_tokens"]
    bench = {}
    for n in (1, 12):  # a 3:2 image: 3 × 2 tiles and the thumbnail, or one tile
        code, out, err = cli("bench", tmp_path / "cpu", "--images", 1, "--image-size", "210x140", "--max-tiles", n,
                             "--prompt-len", 160, "--gen-len", 2, "--repeat", 1, "--warmup", 0, "--format", "json")
        assert code == 0, err
        bench[n] = json.loads(out)
    assert (bench[12]["tiles_per_image"], bench[12]["image_tokens"], bench[12]["max_tiles"]) == (7, 28, 12)
    assert (bench[1]["tiles_per_image"], bench[1]["image_tokens"]) == (1, 4) and bench[12]["vision_ms_per_tile"] > 0


@pytest.mark.parametrize("name,model_type", [("nvila_hf", "nvila"), ("vila_hf", "vila")])
def test_hf_format_conversions_are_refused_in_one_line(layouts, name, model_type, cli, tmp_path):
    code, _, err = cli("inspect", layouts[name])
    assert code == 1 and f"HF-format conversion (model_type '{model_type}'" in err and "Traceback" not in err
    code, _, err = cli("quantize", layouts[name], "-o", tmp_path / "q")
    assert code == 1 and "HF-format conversion" in err and not (tmp_path / "q").exists()


def test_nvila_video_temporal_pooling_is_refused_not_guessed(layouts, copy_of, cli):
    folder = copy_of(layouts["nvila"])
    config = json.loads((folder / "config.json").read_text())
    tsp = {"_target_": "llava.model.encoders.TSPVideoEncoder", "pool_sizes": [[8, 1, 1]]}  # scripts/NVILA/stage4.sh
    (folder / "config.json").write_text(json.dumps({**config, "video_encoder": tsp, "num_time_tokens": 100}))
    code, _, err = cli("inspect", folder)
    assert code == 1 and "TSPVideoEncoder" in err and "not supported yet" in err and "Traceback" not in err


def test_a_gpu_bundle_is_sized_for_the_tiles_it_was_built_for(layouts, tmp_path, cli):
    from conftest import QUICK_QUANT

    code, _, err = cli("quantize", layouts["nvila_lite"], "-o", tmp_path / "q", "--group-size", 64, *QUICK_QUANT)
    assert code == 0, err
    code, _, err = cli("build-engine", tmp_path / "q", "-o", tmp_path / "b", "--target", "orin", "--max-tiles", 4)
    assert code == 3, err
    m = json.loads((tmp_path / "b/manifest.json").read_text())
    assert m["vision_layout"]["mode"] == "dynamic" and m["vision_layout"]["max_tiles"] == 4
    assert m["limits"]["max_multimodal_len"] == (4 + 1) * 4 and m["limits"]["tower_batch"] == 5  # 4 tiles + thumbnail
    code, out, _ = cli("build-engine", tmp_path / "q", "-o", tmp_path / "b2", "--target", "orin", "--dry-run")
    assert code == 0 and "batch 1..13" in out  # the checkpoint's 12 tiles and the thumbnail
    from vila_edge.errors import UsageError
    from vila_edge.runtime.manifest import EngineInfo

    info = EngineInfo(tmp_path / "b", m)  # what a TensorRT engine built from it reads (its limits are the bundle's)

    class Engine:  # the refusal comes before any vision or LLM call
        tokenizer = None

    with pytest.raises(UsageError, match="--max-tiles 6: .* built for at most 4 tiles per image"):
        Captioner(info, Engine(), "qwen2", max_tiles=6)
    assert Captioner(info, Engine(), "qwen2", max_tiles=2).layout.max_tiles == 2


# ---- S2 / NVILA on the exported graphs: the tower W8A8 on tiles, the projector apart --------------------------------


@pytest.fixture(scope="module")
def quantized(layouts, tmp_path_factory):
    """quantize --vision w8a8 (the default) of the S2 and NVILA layouts, calibrated on tiles of three images."""
    from conftest import QUICK_QUANT, run_cli

    root = tmp_path_factory.mktemp("multiscale_q")
    (root / "media").mkdir()
    for i in range(3):
        image(168, 112 + 28 * i, i).save(root / "media" / f"{i}.png")
    out = {}
    for name in ("s2", "nvila"):
        code, _, err = run_cli("quantize", layouts[name], "-o", root / name, "--group-size", 64, *QUICK_QUANT,
                               "--calib-media", root / "media")
        assert code == 0, err
        out[name] = root / name
    return root, out


@pytest.mark.parametrize("name,passes", [("s2", 5), ("nvila", 1 + 4 + 9)])
def test_a_multiscale_tower_is_calibrated_on_tiles_and_judged_on_whole_images(layouts, quantized, name, passes):
    root, folders = quantized
    tiles = sum(uv.encode_image_upstream(layouts[name], Image.open(root / f"media/{i}.png")).tower_passes for i in range(3))
    vision = folders[name] / "vision"
    assert {"vision_w8a8.onnx", "vision_fp32.onnx", "projector_fp32.onnx", "projector_fp16.onnx",
            "vision_w8a8_fp16.onnx"} <= {p.name for p in vision.iterdir()}
    record = json.loads((vision / "calibration.json").read_text())
    assert record["calibration_images"] == 3 and record["calibration_tiles"] == tiles  # as captioning tiles each alone
    assert record["projector"].startswith("apart") and record["layout"] == {"s2": "s2", "nvila": "dynamic_s2"}[name]
    held = record["held_out"]
    assert held["tiles"] >= held["images"] * passes and held["cosine_min"] > 0.99 and held["fp32_onnx_max_abs_error"] < 1e-4
    assert record["tensorrt_fp16"]["projector_fp16_vs_fp32"]["cosine_min"] > 0.999


def _engine_blocks(folder, im):
    from vila_edge.runtime.cpu import CpuEngine

    engine = CpuEngine(folder, threads=1)
    return [np.asarray(b) for b in Captioner(engine.info, engine).encode([im]).blocks]


@pytest.mark.parametrize("name", ["s2", "nvila"])
def test_the_cpu_engine_encodes_multiscale_images_as_upstream(layouts, quantized, name, cli, tmp_path):
    """fp32 graphs: the upstream oracle's tokens to float error; W8A8 tower: within its calibration's cosine."""
    from vila_edge.export.vision_w8a8 import cosine

    _, folders = quantized
    for vision in ("fp32", "w8a8"):
        code, _, err = cli("build-engine", folders[name], "-o", tmp_path / vision, "--target", "cpu", "--vision", vision)
        assert code == 0, err
    manifest = json.loads((tmp_path / "w8a8/manifest.json").read_text())
    assert manifest["vision"]["projector_file"] == "vision/projector_fp32.onnx"
    for size in [(168, 112), (90, 150)]:
        im = image(*size, seed=size[1])
        want = [b.numpy() for b in uv.encode_image_upstream(layouts[name], im).blocks]
        fp32, w8a8 = _engine_blocks(tmp_path / "fp32", im), _engine_blocks(tmp_path / "w8a8", im)
        assert [b.shape for b in fp32] == [b.shape for b in w8a8] == [b.shape for b in want]
        for mine, theirs, quant in zip(fp32, want, w8a8):
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-4)
            assert cosine(quant[None], theirs[None])[0] > 0.99


def test_s2_and_nvila_caption_on_the_cpu_engine_without_torch(layouts, quantized, cli, tmp_path):
    """One image (tiled), two images (never tiled: NVILA copies the features per scale) and a --source folder, with
    torch and transformers unimportable."""
    from conftest import cli_without_quantize_extra

    root, folders = quantized
    media = root / "media"
    runs, want = [], []
    for name in ("s2", "nvila"):
        code, _, err = cli("build-engine", folders[name], "-o", tmp_path / name, "--target", "cpu")
        assert code == 0, err
        common = ["--prompt", "Describe.", "--max-new-tokens", "2", "--format", "jsonl"]
        runs += [["caption", tmp_path / name, "--image", media / "0.png", *common],
                 ["caption", tmp_path / name, "--image", media / "0.png", media / "1.png", *common],
                 ["caption", tmp_path / name, "--source", media, "--max-captions", 2, *common]]
        one = uv.encode_image_upstream(layouts[name], Image.open(media / "0.png"))
        two = uv.encode_images_upstream(layouts[name], [Image.open(media / f"{i}.png") for i in (0, 1)])
        want += [sum(len(b) for b in one.blocks), sum(len(b) for b in two.blocks)]
    results = cli_without_quantize_extra(*runs)
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    tokens = [json.loads(out)["image_tokens"] for i, (_, out, _) in enumerate(results) if i % 3 != 2]
    assert tokens == want
    assert all(len(out.splitlines()) == 2 for _, out, _ in results[2::3])  # a caption per --source frame


def test_the_onnx_backend_runs_a_multiscale_checkpoints_two_graphs(layouts, quantized, cli):
    _, folders = quantized
    want = uv.encode_image_upstream(layouts["nvila"], Image.open(quantized[0] / "media/0.png"))
    code, out, err = cli("caption", folders["nvila"], "--backend", "onnx", "--image", quantized[0] / "media/0.png",
                         "--prompt", "Describe.", "--max-new-tokens", "2", "--format", "jsonl")
    assert code == 0, err
    assert json.loads(out)["image_tokens"] == sum(len(b) for b in want.blocks)


def test_a_multiscale_gpu_bundle_carries_a_projector_plan_sized_for_one_images_blocks(quantized, tmp_path, cli,
                                                                                      monkeypatch):
    """The bundle's manifest and the two plans build_vision asks TensorRT for (a stand-in build_vision_plan records
    the calls; TensorRT's own builder is checked in test_trt_vision.py)."""
    from vila_edge.export import trt_engine, trt_vision
    from vila_edge.targets import get_target

    _, folders = quantized
    code, out, _ = cli("build-engine", folders["nvila"], "-o", tmp_path / "d", "--target", "orin", "--dry-run")
    assert code == 0 and "projector's plan: fp16, batch 1..12" in out
    code, _, err = cli("build-engine", folders["nvila"], "-o", tmp_path / "b", "--target", "orin")
    assert code == 3, err
    m = json.loads((tmp_path / "b/manifest.json").read_text())
    vision = m["vision"]
    assert vision["projector_onnx"] == "vision/projector_fp16.onnx" and (tmp_path / "b" / vision["projector_onnx"]).is_file()
    assert (vision["projector_input"], vision["projector_batch"]) == ([4 * 4, 3 * 32], 12)  # 4x4 features x 3 scales
    assert m["limits"]["tower_batch"] == 1 + 4 + 12 and m["vision_layout"]["mode"] == "dynamic_s2"
    calls = []

    def build_vision_plan(onnx, plan, cache, precision, input_name, item_shape, max_batch, workspace_bytes):
        calls.append((Path(onnx).name, precision, input_name, tuple(item_shape), max_batch))
        plan.write_bytes(b"plan")
        return {"precision": precision, "max_batch": max_batch}

    monkeypatch.setattr(trt_vision, "build_vision_plan", build_vision_plan)
    (tmp_path / "e").mkdir()
    entry = trt_engine.build_vision(tmp_path / "b", tmp_path / "e", vision, m["limits"], get_target("orin"), tmp_path / "c")
    assert calls == [("vision_w8a8_fp16.onnx", "int8", "pixel_values", (3, 56, 56), 17),
                     ("projector_fp16.onnx", "fp16", "image_features", (16, 96), 12)]
    assert entry["projector_plan"] == "vision/projector.plan" and (tmp_path / "e/vision/projector.plan").is_file()


def test_an_engine_whose_vision_is_one_graph_refuses_multiscale_images_in_one_line(quantized, cli, tmp_path):
    """As an engine built before the projector was exported apart: the tower's file then held both."""
    _, folders = quantized
    code, _, err = cli("build-engine", folders["s2"], "-o", tmp_path / "e", "--target", "cpu")
    assert code == 0, err
    manifest = json.loads((tmp_path / "e/manifest.json").read_text())
    del manifest["vision"]["projector_file"]
    (tmp_path / "e/manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli("caption", tmp_path / "e", "--image", quantized[0] / "media/0.png", "--prompt", "Describe.")
    assert code == 1 and "its vision is one graph (tower + projector), and s2 images need them apart" in err
    assert "Traceback" not in err

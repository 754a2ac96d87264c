"""VILA1.5-40b (InternViT-6B) on every path, against the independent oracle written from VILA's code
(tests/upstream_internvit.py: modeling_intern_vit.py, intern_encoder.py::build_transform; the projector from
tests/upstream_vila.py), on a tiny random checkpoint in the published layout (tests/tiny_internvit.py): pixels,
tower features, image embeddings, greedy tokens; then W8A8 quantize -> cpu engine -> caption without torch, the GPU
bundle, inspect and plan."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import upstream_internvit as ui
import upstream_vila as uv
from PIL import Image
from test_prompt import vila_tokenizer_image_token
from tiny_internvit import SHAPE, build_vila40b
from transformers import AutoModelForCausalLM, AutoTokenizer

from vila_edge.arch import VISION_TOWERS
from vila_edge.caption import Captioner
from vila_edge.checkpoint import load_checkpoint
from vila_edge.model.vision import VisionEncoder
from vila_edge.model.vlm import VilaModel, load_vision

HERMES_2 = "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n{q}<|im_end|><|im_start|>assistant\n"
S = SHAPE["image_size"]


def image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def vila40b(tmp_path_factory, tokenizer_dirs):
    return build_vila40b(tmp_path_factory.mktemp("internvit") / "VILA1.5-40b-tiny", tokenizer_dirs["llama"])


@pytest.fixture(scope="module")
def model(vila40b):
    return VilaModel(load_checkpoint(vila40b), dtype="float32")


def oracle_embeds(root, pixels: torch.Tensor) -> torch.Tensor:
    """hidden_states[-1] without the CLS through VILA1.5's column-major mlp_downsample: [B, T, H]."""
    tower = ui.InternVisionModel.from_folder(root / "vision_tower")
    hidden = json.loads((root / "llm" / "config.json").read_text())["hidden_size"]
    projector = uv.UpstreamProjector.load(root / "mm_projector", SHAPE["hidden_size"], hidden, "column")
    with torch.no_grad():
        return projector(ui.feature_select(tower(pixels), -1, "patch"))


# ---- the oracle itself -------------------------------------------------------------------------------------------


def test_the_oracle_preprocesses_as_build_transform_says():
    """A flat image: every pixel (v/255 - mean) / std with ImageNet's statistics, at the processor's size."""
    flat = Image.new("RGB", (90, 60), (255, 128, 0))
    x = ui.process_image(flat, 28)
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32
    want = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), ui.IMAGENET_MEAN, ui.IMAGENET_STD)]
    np.testing.assert_allclose(x.mean((1, 2)).numpy(), want, rtol=1e-6)


def test_the_oracle_normalises_q_and_k_over_all_heads_at_once():
    """InternAttention: q_norm sees a token's whole q row (all heads), so scaling one head changes the others."""
    torch.manual_seed(0)
    attn = ui.InternAttention({**ui.CONFIG_DEFAULTS, "hidden_size": 8, "num_attention_heads": 2})
    x = torch.randn(1, 3, 8)
    q = attn.qkv(x)[..., :8]
    whole = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6)
    per_head = torch.cat([h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) for h in q.split(4, -1)], -1)
    b, n, _ = x.shape
    got = attn.q_norm(attn.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4)[0].transpose(1, 2).flatten(-2))
    assert torch.allclose(got, whole, atol=1e-6) and not torch.allclose(got, per_head, atol=1e-3)


# ---- loader and reference pipeline ---------------------------------------------------------------------------------


def test_the_published_layout_loads_with_the_cls_counted(vila40b, cli):
    ckpt = load_checkpoint(vila40b)
    assert ckpt.vision_kind == "intern" and ckpt.select_layer == -1 and ckpt.select_feature == "patch"
    assert ckpt.vision_tokens == (S // 14) ** 2 and ckpt.tokens_per_image == (S // 28) ** 2  # 1024 and 256 at 448
    assert ckpt.preprocessor["image_mean"] == list(ui.IMAGENET_MEAN) and ckpt.preprocessor["size"]["height"] == S
    code, out, err = cli("inspect", vila40b, "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["vision"]["kind"], info["tokens_per_image"], info["conv_mode"]) == ("intern", 16, "hermes-2")
    code, out, _ = cli("inspect", vila40b)
    assert code == 0 and "intern: hidden 32, 3 layers" in out and "ImageNet" in out


@pytest.mark.parametrize("size", [(130, 90), (S, S), (60, 200)])
def test_pixels_are_vilas_hard_coded_transform_bit_for_bit(vila40b, model, size):
    im = image(*size, seed=size[0])
    got = Captioner(model.ckpt, model, "hermes-2").preprocess(im)
    np.testing.assert_array_equal(got, ui.process_image(im, S).numpy())


def test_tower_features_are_vilas_intern_vit_hidden_states_minus_one(vila40b, model):
    x = torch.randn(2, 3, S, S)
    oracle = ui.InternVisionModel.from_folder(vila40b / "vision_tower")
    with torch.no_grad():
        states = oracle(x)
        got = model.vision(x)
    assert len(states) == SHAPE["num_hidden_layers"] + 1 and len(model.vision.layers) == SHAPE["num_hidden_layers"]
    want = ui.feature_select(states, -1, "patch")
    assert got.shape == want.shape == (2, (S // 14) ** 2, SHAPE["hidden_size"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_a_tower_with_qkv_bias_and_another_eps_matches_too(tmp_path, tokenizer_dirs):
    """The q/k/v bias split along with the weight, and VILA's layer_norm_eps reaching the q/k norms."""
    root = build_vila40b(tmp_path / "VILA1.5-40b-bias", tokenizer_dirs["llama"], seed=3, qkv_bias=True,
                         layer_norm_eps=1e-2)
    vision, _ = load_vision(load_checkpoint(root), torch.float32)
    x = torch.randn(1, 3, S, S)
    with torch.no_grad():
        want = ui.feature_select(ui.InternVisionModel.from_folder(root / "vision_tower")(x), -1, "patch")
        torch.testing.assert_close(vision(x), want, rtol=0, atol=1e-5)


def test_the_comparison_catches_swapped_layer_scales(vila40b):
    """Sensitivity: with ls1 and ls2 renamed the other way round the features no longer match the oracle."""
    ckpt = load_checkpoint(vila40b)
    spec = VISION_TOWERS["intern"]
    swapped = tuple((p, {".lambda_1": ".lambda_2", ".lambda_2": ".lambda_1"}.get(r, r)) for p, r in spec.renames)
    from vila_edge.model.intern_vit import load_intern_vit

    tower = load_intern_vit(ckpt.vision_dir, ckpt.weights["vision_tower"], ckpt.vision_config,
                            dataclasses.replace(spec, renames=swapped), torch.float32)
    wrong = VisionEncoder(tower, -1, "patch", spec.layers, spec.layer_takes_mask)
    x = torch.randn(1, 3, S, S)
    with torch.no_grad():
        want = ui.feature_select(ui.InternVisionModel.from_folder(vila40b / "vision_tower")(x), -1, "patch")
        assert (wrong(x) - want).abs().max() > 1e-2


def test_image_embeddings_match_the_oracle(vila40b, model):
    ims = [image(130, 90, 1), image(70, 160, 2)]
    pixels = np.stack([Captioner(model.ckpt, model, "hermes-2").preprocess(im) for im in ims])
    got = model.encode_images(pixels)
    want = oracle_embeds(vila40b, torch.stack([ui.process_image(im, S) for im in ims]))
    assert got.shape == want.shape == (2, 16, 64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@torch.no_grad()
def independent_vila40b(root, pics, question, max_new_tokens=8):
    """VILA1.5-40b's inference from the files: process_image -> InternViT -> projector, hermes-2, greedy."""
    tok = AutoTokenizer.from_pretrained(root / "llm")
    llm = AutoModelForCausalLM.from_pretrained(root / "llm", dtype=torch.float32).eval()
    x = oracle_embeds(root, torch.stack([ui.process_image(p, S) for p in pics]))
    ids = vila_tokenizer_image_token(HERMES_2.format(q="<image>\n" * len(pics) + question), tok)
    embed, parts, run, k = llm.get_input_embeddings(), [], [], 0
    for t in ids + [None]:
        if t == -200 or t is None:
            parts.append(embed(torch.tensor(run, dtype=torch.long)))
            run = []
            if t == -200:
                parts.append(x[k])
                k += 1
        else:
            run.append(t)
    inputs = torch.cat(parts)[None]
    out = llm.generate(inputs_embeds=inputs, attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long),
                       max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id)
    new = out[0].tolist()
    return (new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new), inputs.shape[1]


@pytest.mark.parametrize("n_images", [1, 2])
def test_greedy_tokens_match_the_independent_vila40b(vila40b, cli, tmp_path, n_images):
    pics = [image(130 - 20 * i, 90, i) for i in range(n_images)]
    paths = []
    for i, p in enumerate(pics):
        p.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    code, out, err = cli("caption", vila40b, "--image", *paths, "--prompt", "What is this?", "--max-new-tokens", 8,
                         "--temperature", 0, "--backend", "torch", "--format", "jsonl")
    assert code == 0, err
    record = json.loads(out)
    want, prompt_len = independent_vila40b(vila40b, pics, "What is this?")
    assert record["conv_mode"] == "hermes-2"  # by name, as VILA's README maps 40b
    assert record["token_ids"] == want and record["prompt_tokens"] == prompt_len
    assert record["image_tokens"] == 16 * n_images


def test_a_folder_without_preprocessor_config_still_loads(vila40b, copy_of):
    """VILA's InternVisionTower never reads it: the transform is in the code."""
    folder = copy_of(vila40b)
    (folder / "vision_tower" / "preprocessor_config.json").unlink()
    assert load_checkpoint(folder).preprocessor == load_checkpoint(vila40b).preprocessor


# ---- W8A8 vision, engines, plan ---------------------------------------------------------------------------------------


def test_smoothquant_pairs_name_the_layers_modules_and_keep_the_function(model):
    from vila_edge.quant.smoothquant import input_abs_max, smooth_layers

    vision, _ = load_vision(model.ckpt, torch.float32)
    pairs = VISION_TOWERS["intern"].smooth_pairs
    names = {n for n, _ in vision.layers[0].named_modules()}
    assert {p for p, _ in pairs} | {lin for _, lins in pairs for lin in lins} <= names
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        before = vision(x)
        act_max = input_abs_max(vision.layers, pairs, vision, [x])
        scales = smooth_layers(vision.layers, pairs, act_max, 0.5)
        after = vision(x)
    assert len(scales) == 2 * SHAPE["num_hidden_layers"] and any((s - 1).abs().max() > 0.05 for s in scales.values())
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def quantized(vila40b, tmp_path_factory):
    """quantize (AWQ g64, W8A8 tower calibrated on three images) into a folder whose name keeps "40b"."""
    from conftest import QUICK_QUANT, run_cli

    root = tmp_path_factory.mktemp("internvit_q")
    (root / "media").mkdir()
    for i in range(3):
        image(140 + 20 * i, 100, 10 + i).save(root / "media" / f"{i}.png")
    out = root / "VILA1.5-40b-awq"
    code, _, err = run_cli("quantize", vila40b, "-o", out, "--group-size", 64, *QUICK_QUANT, "--calib-media",
                           root / "media")
    assert code == 0, err
    return root, out


def test_the_w8a8_tower_is_calibrated_and_its_cosine_recorded(quantized):
    _, out = quantized
    record = json.loads((out / "vision" / "calibration.json").read_text())
    assert record["calibration_images"] == 3 and record["projector"] == "in the graph"
    held = record["held_out"]
    assert held["cosine_min"] > 0.99 and held["fp32_onnx_max_abs_error"] < 1e-4
    assert len(record["layers"]) == SHAPE["num_hidden_layers"]
    assert record["tensorrt_fp16"]["fp16_vs_fp32"]["cosine_min"] > 0.999
    # SmoothQuant folded into both RMSNorms of every layer
    assert len(record["smooth_scales_max"]) == 2 * SHAPE["num_hidden_layers"]


def _engine_embeds(folder, im):
    from vila_edge.runtime.cpu import CpuEngine

    engine = CpuEngine(folder, threads=1)
    return np.concatenate([np.asarray(b) for b in Captioner(engine.info, engine).encode([im]).blocks])


def test_the_cpu_engine_encodes_images_as_the_oracle(vila40b, quantized, cli, tmp_path):
    from vila_edge.export.vision_w8a8 import cosine

    _, out = quantized
    for vision in ("fp32", "w8a8"):
        code, _, err = cli("build-engine", out, "-o", tmp_path / vision, "--target", "cpu", "--vision", vision)
        assert code == 0, err
    im = image(150, 110, 7)
    want = oracle_embeds(vila40b, ui.process_image(im, S)[None])[0].numpy()
    np.testing.assert_allclose(_engine_embeds(tmp_path / "fp32", im), want, rtol=0, atol=1e-4)
    assert cosine(_engine_embeds(tmp_path / "w8a8", im)[None], want[None])[0] > 0.99


def test_quantize_build_engine_caption_without_torch(quantized, cli, tmp_path):
    from conftest import cli_without_quantize_extra

    media, out = quantized[0] / "media", quantized[1]
    code, _, err = cli("build-engine", out, "-o", tmp_path / "cpu", "--target", "cpu")
    assert code == 0, err
    common = ["--prompt", "Describe.", "--max-new-tokens", "3", "--format", "jsonl"]
    results = cli_without_quantize_extra(["caption", tmp_path / "cpu", "--image", media / "0.png", *common],
                                         ["caption", tmp_path / "cpu", "--image", media / "0.png", media / "1.png", *common],
                                         ["inspect", tmp_path / "cpu"])
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    records = [json.loads(o) for _, o, _ in results[:2]]
    assert [r["image_tokens"] for r in records] == [16, 32] and {r["conv_mode"] for r in records} == {"hermes-2"}
    assert "16 tokens per image" in results[2][1]


def test_the_onnx_backend_runs_the_w8a8_tower(quantized, cli):
    media, out = quantized[0] / "media", quantized[1]
    code, out_text, err = cli("caption", out, "--backend", "onnx", "--image", media / "0.png", "--prompt", "Describe.",
                              "--max-new-tokens", 2, "--format", "jsonl")
    assert code == 0, err
    assert json.loads(out_text)["image_tokens"] == 16


def test_a_gpu_bundle_carries_the_fp16_w8a8_tower(quantized, cli, tmp_path):
    import onnx

    from vila_edge.export.trt_qdq import qdq_problems

    _, out = quantized
    code, _, err = cli("build-engine", out, "-o", tmp_path / "b", "--target", "orin")
    assert code == 3, err  # no TensorRT here: the bundle, to build on the device
    m = json.loads((tmp_path / "b/manifest.json").read_text())
    assert m["limits"]["max_multimodal_len"] == 16 and m["vision"]["onnx"] == "vision/vision_w8a8_fp16.onnx"
    assert qdq_problems(onnx.load(tmp_path / "b" / m["vision"]["onnx"])) == []
    recipe = json.loads((tmp_path / "b/recipe.json").read_text())
    assert recipe["vision"]["kind"] == "intern" and recipe["tokens_per_image"] == 16


def test_the_40b_recipe_has_45_intern_vit_layers_and_fits_only_the_agx_orins():
    from vila_edge.plan import load_recipe, memory_plan
    from vila_edge.targets import TARGETS

    recipe = load_recipe("vila1.5-40b")
    assert recipe["vision"] == {"kind": "intern", "hidden": 3200, "layers": 45, "intermediate": 12800,
                                "image_size": 448, "patch": 14}
    assert recipe["tokens_per_image"] == 256 and recipe["conv_mode"] == "hermes-2"
    fits = {t: memory_plan(recipe, TARGETS[t]).fits for t in ("orin", "orin-32gb", "orin-nx", "orin-nano")}
    assert fits == {"orin": True, "orin-32gb": True, "orin-nx": False, "orin-nano": False}
    # the 32 GB board only with the int8 tower (5.5 GB); the fp16 one (11 GB) leaves the 64 GB one alone
    fp16 = {t: memory_plan(recipe, TARGETS[t], vision_precision="fp16").fits for t in ("orin", "orin-32gb")}
    assert fp16 == {"orin": True, "orin-32gb": False}


def test_a_tower_whose_weights_sit_beside_its_graphs_runs_every_step(vila40b, monkeypatch, tmp_path, cli):
    """InternViT-6B's fp32 graph is 22 GB: past protobuf's 2 GB, its weights live in .data files beside the graphs and
    are set aside whenever a graph is serialized. Here the tiny tower takes that path: quantize, the cpu engine
    (captioning without torch), the GPU bundle's TensorRT checks."""
    from conftest import QUICK_QUANT, cli_without_quantize_extra

    from vila_edge.export import vision_onnx

    monkeypatch.setattr(vision_onnx, "EXTERNAL_DATA_BYTES", 0)
    monkeypatch.setattr(vision_onnx, "SET_ASIDE_BYTES", 256)  # the weights, not the shape constants
    out = tmp_path / "VILA1.5-40b-external"
    code, _, err = cli("quantize", vila40b, "-o", out, "--group-size", 64, *QUICK_QUANT)
    assert code == 0, err
    for name in ("vision_fp32", "vision_w8a8", "vision_fp16", "vision_w8a8_fp16"):
        assert (out / "vision" / f"{name}.onnx.data").stat().st_size > 0, name
    record = json.loads((out / "vision" / "calibration.json").read_text())
    assert record["held_out"]["cosine_min"] > 0.99 and record["tensorrt_fp16"]["fp16_vs_fp32"]["cosine_min"] > 0.999
    assert not [p.name for p in (out / "vision").iterdir() if p.name.startswith(".")]  # no graph left behind
    code, _, err = cli("build-engine", out, "-o", tmp_path / "cpu", "--target", "cpu")
    assert code == 0, err
    code, _, err = cli("build-engine", out, "-o", tmp_path / "b", "--target", "orin")
    assert code == 3, err
    image(120, 100, 3).save(tmp_path / "x.png")
    [(code, text, err)] = cli_without_quantize_extra(["caption", tmp_path / "cpu", "--image", tmp_path / "x.png",
                                                      "--prompt", "Describe.", "--max-new-tokens", "2", "--format",
                                                      "jsonl"])
    assert code == 0, err
    assert json.loads(text)["image_tokens"] == 16


def test_the_exported_rms_norm_holds_in_fp16_where_the_plain_one_overflows():
    """TensorRT runs an fp16 graph's squares in fp16 (x² overflows past |x| ≈ 256); the exported RMSNorm scales each
    token by its largest |x| first and stays, in exact arithmetic, transformers' InternVLVisionRMSNorm."""
    from transformers.models.internvl.modeling_internvl import InternVLVisionRMSNorm

    from vila_edge.export.vision_onnx import Fp16SafeRMSNorm

    torch.manual_seed(0)
    norm = InternVLVisionRMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(64))
        x = torch.randn(4, 64) * torch.tensor([[1e-4], [1.0], [900.0], [3e4]])  # near zero to near fp16's max
        want = norm(x)
        torch.testing.assert_close(Fp16SafeRMSNorm(norm)(x), want, rtol=1e-5, atol=1e-6)
        half = Fp16SafeRMSNorm(InternVLVisionRMSNorm(64, eps=1e-6).half())
        half.weight.copy_(norm.weight.half())
        torch.testing.assert_close(half(x.half()).float(), want, rtol=2e-2, atol=2e-2)  # fp16 arithmetic throughout
        h = x.half()
        plain = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)  # the plain formula in fp16: x² overflows
        assert not torch.isfinite(h.pow(2)[2:]).all() and (plain[2:] == 0).all()


def test_export_swaps_the_rms_norms_for_the_export_only(model, tmp_path):
    import onnx

    from vila_edge.export.vision_onnx import export_vision_onnx

    vision, projector = load_vision(model.ckpt, torch.float32)
    export_vision_onnx(vision, projector, S, tmp_path / "v.onnx")
    ops = [n.op_type for n in onnx.load(tmp_path / "v.onnx").graph.node]
    assert ops.count("ReduceMax") == 4 * SHAPE["num_hidden_layers"]  # norm1, norm2, q_norm, k_norm of every layer
    assert type(vision.layers[0].layernorm_before).__name__ == "InternVLVisionRMSNorm"  # put back afterwards

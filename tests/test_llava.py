"""LLaVA-1.5 folders as downloaded (tests/tiny_llava.py: the original's pickle shards with the CLIP tower by hub id,
llava-hf in transformers 4.x and 5.x names) on every path: pixels, image embeddings and greedy tokens against the
independent LLaVA implementation in tests/upstream_llava.py; the tower found by config path, --vision-tower and the
Hugging Face cache; convert, quantize -> build-engine cpu -> caption with torch unimportable; the refusals."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import QUICK_QUANT, cli_without_quantize_extra
from PIL import Image
from tiny_llava import HUB_ID, build_llava_hf, build_original, write_clip_folder, write_hub_cache
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig
from upstream_llava import llava_hf_prompt, load_llava_hf, load_original, vicuna_v1_prompt

from vila_edge.caption import Captioner
from vila_edge.checkpoint import SUBFOLDERS, load_checkpoint
from vila_edge.errors import CheckpointError
from vila_edge.generate import SamplingParams
from vila_edge.llava_format import CLIP_VISION_DEFAULTS, LLAMA_DEFAULTS, RULES, rename
from vila_edge.model.vlm import VilaModel

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer_dirs):
    """{"clip": the stand-in hub tower, "original", "tuned" (its own tower in the shards), "hf4", "hf5"}."""
    root = tmp_path_factory.mktemp("llava")
    clip = write_clip_folder(root / "clip-vit-large-patch14-336", seed=50)
    torch.manual_seed(51)
    tuned = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in json.loads((clip / "config.json").read_text())
                                                ["vision_config"].items() if k != "architectures"})).eval()
    return {"clip": clip,
            "original": build_original(root / "llava-v1.5-7b", tokenizer_dirs["llama"]),
            "tuned": build_original(root / "llava-v1.5-7b-tuned", tokenizer_dirs["llama"], seed=31, tuned_tower=tuned),
            "hf4": build_llava_hf(root / "llava-1.5-7b-hf", tokenizer_dirs["llama"], "4.x"),
            "hf5": build_llava_hf(root / "llava-1.5-7b-hf-5x", tokenizer_dirs["llama"], "5.x", seed=41)}


def options(folders, name) -> dict:
    return {"allow_pickle": True, "vision_tower": str(folders["clip"])} if name in ("original", "tuned") else {}


def flags(folders, name) -> tuple:
    return ("--allow-pickle", "--vision-tower", folders["clip"]) if name in ("original", "tuned") else ()


def reference(folders, name, hub_processor=False):
    if name in ("original", "tuned"):
        ref = load_original(folders[name], folders["clip"])
        ref.aspect = None if hub_processor else ref.aspect
        return ref
    return load_llava_hf(folders[name], hub_processor)


def scene(w=120, h=90, seed=0) -> Image.Image:
    """A non-square image (so that `pad` and the centre crop both matter)."""
    rng = np.random.default_rng(seed)
    x = np.kron(rng.integers(0, 256, (h // 10, w // 10, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    return Image.fromarray(x)


def test_defaults_for_missing_keys_are_transformers_own():
    llama, clip = LlamaConfig(), CLIPVisionConfig()
    assert {k: getattr(llama, k) for k in LLAMA_DEFAULTS} == LLAMA_DEFAULTS
    assert {k: getattr(clip, k) for k in CLIP_VISION_DEFAULTS} == CLIP_VISION_DEFAULTS


@pytest.mark.parametrize("layout,name,part,new", [
    ("llava", "model.layers.3.mlp.up_proj.weight", "llm", "model.layers.3.mlp.up_proj.weight"),
    ("llava", "model.mm_projector.2.bias", "mm_projector", "layers.2.bias"),
    ("llava", "model.mm_projector.2.bias", "llm", None),
    ("llava", "model.layers.0.self_attn.rotary_emb.inv_freq", "llm", None),
    ("llava", "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", "vision_tower",
     "vision_model.encoder.layers.0.mlp.fc1.weight"),
    ("llava-hf", "language_model.model.norm.weight", "llm", "model.norm.weight"),
    ("llava-hf", "language_model.lm_head.weight", "llm", "lm_head.weight"),
    ("llava-hf", "vision_tower.vision_model.pre_layrnorm.bias", "vision_tower", "vision_model.pre_layrnorm.bias"),
    ("llava-hf", "multi_modal_projector.linear_2.weight", "mm_projector", "layers.2.weight"),
    ("llava-hf", "model.language_model.embed_tokens.weight", "llm", "model.embed_tokens.weight"),
    ("llava-hf", "model.vision_tower.embeddings.patch_embedding.weight", "vision_tower",
     "vision_model.embeddings.patch_embedding.weight"),
    ("llava-hf", "model.multi_modal_projector.linear_1.bias", "mm_projector", "layers.0.bias"),
    ("clip", "text_model.embeddings.token_embedding.weight", "vision_tower", None),
])
def test_rules_name_each_tensor_as_the_vila_layout_does(layout, name, part, new):
    assert rename(name, RULES[layout], part) == new


@pytest.mark.parametrize("name", ["original", "tuned", "hf4", "hf5"])
def test_inspect_reads_each_layout_as_downloaded(folders, name, cli):
    code, text, err = cli("inspect", folders[name], *flags(folders, name))
    assert code == 0 and "read in place as the VILA layout" in text, err
    code, out, err = cli("inspect", folders[name], *flags(folders, name), "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    assert info["layout"] == ("llava" if name in ("original", "tuned") else "llava-hf")
    assert info["tokens_per_image"] == 25 and info["projector"]["type"] == "mlp2x_gelu"  # 5x5: 576 of 577 at 336 px
    assert (info["vision"]["kind"], info["vision"]["select_layer"], info["vision"]["select_feature"]) == ("clip", -2, "patch")
    assert info["vision"]["image_aspect_ratio"] == "pad" and info["conv_mode"] == "vicuna_v1"
    assert info["llm"]["vocab_size"] == (512 if name in ("original", "tuned") else 576)
    if name in ("original", "hf4"):  # inspect is a core command: the same without torch or transformers
        ((code, bare, err),) = cli_without_quantize_extra(("inspect", folders[name], *flags(folders, name), "--format", "json"))
        assert code == 0 and json.loads(bare) == info, err


@pytest.mark.parametrize("name", ["original", "tuned", "hf4", "hf5"])
def test_pixels_embeddings_and_greedy_tokens_match_llava(folders, name):
    ckpt = load_checkpoint(folders[name], **options(folders, name))
    model = VilaModel(ckpt, dtype="float32")
    captioner = Captioner(ckpt, model)
    ref = reference(folders, name)
    image = scene()
    pixels = captioner.preprocess(image)[None]
    np.testing.assert_allclose(pixels, ref.pixels([image]).numpy(), rtol=0, atol=1e-6)
    got = model.encode_images(pixels).numpy()
    want = ref.encode_images(torch.from_numpy(pixels)).numpy()
    assert got.shape == (1, 25, 64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    answer = captioner([image], QUESTION, SamplingParams(max_new_tokens=8, temperature=0))
    tokens, prompt_len = ref.answer([image], vicuna_v1_prompt("<image>\n" + QUESTION), 8)
    assert answer.token_ids == tokens and answer.prompt_tokens == prompt_len
    assert answer.image_tokens == 25


def test_a_tuned_tower_in_the_shards_is_the_one_used(folders):
    tuned = load_checkpoint(folders["tuned"], **options(folders, "tuned"))
    assert tuned.weights["vision_tower"][0].parent == folders["tuned"]  # not the hub tower's file
    hub = load_checkpoint(folders["original"], **options(folders, "original"))
    assert hub.weights["vision_tower"][0].parent == folders["clip"]


@pytest.mark.parametrize("name", ["original", "hf4"])
def test_hf_processor_takes_the_hub_processor_and_template(folders, name):
    ckpt = load_checkpoint(folders[name], hf_processor=True, **options(folders, name))
    assert ckpt.image_aspect_ratio is None and ckpt.recorded_conv_mode() == ("llava_hf", "config.json conv_mode")
    captioner = Captioner(ckpt, VilaModel(ckpt, dtype="float32"))
    ref, image = reference(folders, name, hub_processor=True), scene(seed=1)
    pixels = captioner.preprocess(image)[None]
    np.testing.assert_allclose(pixels, ref.pixels([image]).numpy(), rtol=0, atol=1e-6)  # centre crop, no pad
    if name == "hf4":
        answer = captioner([image], QUESTION, SamplingParams(max_new_tokens=8, temperature=0))
        tokens, prompt_len = ref.answer([image], llava_hf_prompt(folders[name], QUESTION, 1), 8)
        assert answer.token_ids == tokens and answer.prompt_tokens == prompt_len


def test_the_tower_is_found_in_the_hugging_face_cache(folders, tmp_path, monkeypatch, cli):
    snapshot = write_hub_cache(tmp_path / "hf" / "hub", folders["clip"])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert load_checkpoint(folders["original"], allow_pickle=True).vision_dir == snapshot
    image = tmp_path / "scene.png"
    scene().save(image)
    code, out, err = cli("caption", folders["original"], "--allow-pickle", "--image", image, "--prompt", QUESTION,
                         "--max-new-tokens", 4, "--format", "jsonl")
    assert code == 0, err
    assert json.loads(out)["image_tokens"] == 25


def test_a_local_path_in_the_config_is_the_tower(folders, tmp_path):
    root = tmp_path / "llava-local-tower"
    shutil.copytree(folders["original"], root)
    config = json.loads((root / "config.json").read_text())
    config["mm_vision_tower"] = str(folders["clip"])
    (root / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(root, allow_pickle=True).vision_dir == folders["clip"]


def test_refusals_name_the_places_and_the_option(folders, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    code, _, err = cli("inspect", folders["original"], "--allow-pickle")
    assert code == 1 and "Traceback" not in err
    assert HUB_ID in err and "--vision-tower" in err and str(tmp_path / "empty-hf" / "hub") in err
    assert f"nor under {folders['original']}" in err
    code, _, err = cli("inspect", folders["original"], "--vision-tower", folders["clip"])
    assert code == 1 and "pickle-only weights" in err and "--allow-pickle" in err
    code, _, err = cli("quantize", folders["original"], "-o", tmp_path / "q", "--vision-tower", folders["clip"])
    assert code == 1 and "--allow-pickle" in err and not (tmp_path / "q").exists()
    code, _, err = cli("inspect", folders["original"], "--allow-pickle", "--vision-tower", tmp_path / "nowhere")
    assert code == 1 and "--vision-tower" in err and "no config.json" in err
    code, _, err = cli("convert", folders["hf4"], "-o", tmp_path / "c", "--quiet")
    assert code == 0, err
    code, _, err = cli("inspect", tmp_path / "c", "--hf-processor")  # the VILA layout: nothing to choose
    assert code == 2 and "drop them" in err


def _write(root, config, files=()):
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("{}")
    return root


@pytest.mark.parametrize("config,files,resembles", [
    ({"architectures": ["LlavaMistralForCausalLM"], "model_type": "llava_mistral", "mm_vision_tower": "openai/clip"}, (),
     "resembles the LLaVA-1.5 original layout (a flat config with mm_vision_tower"),
    ({"architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next", "text_config": {},
      "vision_config": {}}, (), "resembles llava-hf (text_config / vision_config)"),
    ({"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama"}, ("llm/vila-1.5-3b-w4-g128-awq-v2.pt",),
     "resembles a TinyChat / llm-awq -AWQ repo (llm/*.pt)"),
    ({"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "llm_cfg": {}}, (),
     "resembles the VILA layout (model_type 'llava_llama'), but llm/ is missing: no llm/ folder"),
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, (), "resembles none of them"),
])
def test_an_unrecognised_layout_names_the_layouts_and_the_nearest(tmp_path, config, files, resembles):
    root = _write(tmp_path / "folder", config, files)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(root)
    message = str(e.value)
    assert resembles in message and "Layouts: VILA" in message and "llava-hf" in message and "\n" not in message


@pytest.mark.parametrize("name", ["original", "hf4", "hf5"])
def test_convert_writes_the_vila_layout_in_safetensors(folders, name, tmp_path, cli):
    out = tmp_path / "vila"
    if name == "original":  # pickle: read with torch
        code, stdout, err = cli("convert", folders[name], "-o", out, *flags(folders, name), "--quiet")
    else:  # safetensors: copied from the headers, torch unimportable
        ((code, stdout, err),) = cli_without_quantize_extra(("convert", folders[name], "-o", out, "--quiet"))
    assert code == 0, err
    assert "vicuna_v1" in stdout and '"pad"' in stdout
    converted = load_checkpoint(out)
    assert converted.layout == "vila" and not list(out.rglob("*.bin"))
    assert all(f.suffix == ".safetensors" for part in SUBFOLDERS for f in converted.weights[part])
    source = load_checkpoint(folders[name], **options(folders, name))
    a, b = VilaModel(source, dtype="float32"), VilaModel(converted, dtype="float32")
    pixels = Captioner(converted, b).preprocess(scene())[None]
    assert torch.equal(a.encode_images(pixels), b.encode_images(pixels))
    state_a, state_b = a.llm.state_dict(), b.llm.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_eval_ppl_reads_the_original_folder(folders, tmp_path, cli):
    text = tmp_path / "held_out.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    code, out, err = cli("eval-ppl", folders["original"], "--text", text, *flags(folders, "original"),
                         "--max-tokens", 128, "--seqlen", 64, "--group-size", 32, "--format", "json")
    assert code == 0, err
    ppl = json.loads(out)
    assert ppl["fp"] > 1 and ppl["rtn"] > 1
    code, _, err = cli("eval-ppl", folders["original"], "--text", text, *flags(folders, "original"),
                       "--max-tokens", 128, "--seqlen", 64, "--group-size", 48)  # pickle: no header to check it from
    assert code == 2 and "--group-size 48 does not divide in_features" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["original", "hf4"])
def test_quantize_build_engine_caption_without_torch(folders, name, tmp_path, cli):
    quant, engine, image = tmp_path / "awq", tmp_path / "cpu", tmp_path / "scene.png"
    scene().save(image)
    code, _, err = cli("quantize", folders[name], "-o", quant, "--group-size", 64, *flags(folders, name), *QUICK_QUANT)
    assert code == 0, err
    written = load_checkpoint(quant)  # the VILA layout, safetensors only: nothing downstream sees LLaVA's
    assert written.layout == "vila" and not list(quant.rglob("*.bin"))
    assert written.config["conv_mode"] == "vicuna_v1" and written.image_aspect_ratio == "pad"
    code, _, err = cli("build-engine", quant, "-o", engine, "--target", "cpu", "--lm-head", "fp16")
    assert code == 0, err
    assert "native" in json.loads((engine / "manifest.json").read_text())["vision"]  # CLIP on our kernels by default
    args = ("--image", image, "--prompt", QUESTION, "--temperature", 0, "--max-new-tokens", 8, "--format", "jsonl")
    code, out, err = cli("caption", quant, "--backend", "onnx", *args)
    assert code == 0, err
    bench = ("bench", engine, "--prompt-len", 160, "--gen-len", 4, "--images", 1, "--repeat", 1, "--warmup", 0,
             "--threads", 1, "--format", "json")
    (code, answer, err), (bench_code, record, bench_err) = cli_without_quantize_extra(
        ("caption", engine, *args, "--activations", "fp32", "--kv-cache", "fp32"), bench)
    assert code == 0, err
    assert json.loads(answer)["token_ids"] == json.loads(out)["token_ids"]
    assert json.loads(answer)["image_tokens"] == 25
    assert bench_code == 0, bench_err
    record = json.loads(record)
    assert record["text_tokens"] == 160 and record["prompt_tokens"] > 160 and record["decode_tok_s"] > 0
    if name == "original":  # a GPU target's bundle (built into an engine on the device)
        code, _, err = cli("build-engine", quant, "-o", tmp_path / "bundle", "--target", "rtx4090")
        assert code in (0, 3), err
        manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
        assert manifest["kind"] == "bundle" and manifest["vision"]["tokens_per_image"] == 25


def test_the_image_moves_the_answer(folders):
    """The greedy comparison above means something: another image gives other tokens (the tiny model sees it)."""
    ckpt = load_checkpoint(folders["hf4"])
    captioner = Captioner(ckpt, VilaModel(ckpt, dtype="float32"))
    params = SamplingParams(max_new_tokens=8, temperature=0)
    answers = [captioner([scene(seed=s)], QUESTION, params).token_ids for s in (0, 7)]
    assert len(answers[0]) == 8 and answers[0] != answers[1]

"""LLaMA-VID through quantize (a VILA-layout checkpoint with vlm_att/, the W8A8 tower and the attention ONNX),
build-engine cpu and the cpu engine; every frame token checked against tests/upstream_llamavid.py (written from the
upstream code)."""

import json

import numpy as np
import pytest
import torch
from conftest import QUICK_QUANT, cli_without_quantize_extra, run_cli
from PIL import Image
from tiny_llamavid import build_llamavid, write_bert_folder
from upstream_llamavid import Upstream, frame_tokens_np

from vila_edge.caption import Captioner, VideoClip
from vila_edge.checkpoint import load_checkpoint
from vila_edge.errors import CheckpointError
from vila_edge.export.onnx_checks import cosine
from vila_edge.formats import ATTENTION_FP16_FILE, ATTENTION_FP32_FILE, VISION_FP32_FILE, VISION_W8A8_FILE
from vila_edge.generate import SamplingParams
from vila_edge.model.vlm import VilaModel
from vila_edge.question import QuestionTokenizer
from vila_edge.runtime.cpu import CpuEngine
from vila_edge.runtime.onnx_vision import OnnxAttention, OnnxVision

QUESTION = "What is the man doing in this video?"
LONG_QUESTION = " ".join(["describe the scene of this video, who are they and where are they?"] * 3)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer_dirs):
    """(the released folder, the bert folder, the quantized checkpoint)."""
    root = tmp_path_factory.mktemp("llamavid-engine")
    bert = write_bert_folder(root / "bert-base-uncased")
    src = build_llamavid(root / "llama-vid-7b-full-224-video-fps-1", tokenizer_dirs["llama"])
    out = root / "awq"
    code, _, err = run_cli("quantize", src, "-o", out, "--group-size", 64, "--allow-pickle", "--qformer-tokenizer", bert,
                           *QUICK_QUANT)
    assert code == 0, err
    return src, bert, out


def frames(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (56, 72, 3), dtype=np.uint8)) for _ in range(n)]


def test_quantize_writes_the_vila_layout_with_vlm_att(built):
    src, bert, out = built
    ckpt = load_checkpoint(out)
    assert ckpt.layout == "vila" and ckpt.family.name == "llama-vid" and ckpt.llamavid is not None
    assert not [f for f in out.rglob("*") if f.suffix in (".bin", ".pth", ".pt")]  # safetensors only
    assert {"llm_cfg", "vision_tower_cfg", "mm_projector_cfg", "llamavid"} <= set(ckpt.config)
    assert ckpt.llm_config["quantization_config"]["group_size"] == 64
    assert (out / "vlm_att" / "vocab.txt").read_text() == (bert / "vocab.txt").read_text()
    assert (out / "vision_tower" / "preprocessor_config.json").is_file()
    assert ckpt.tokens_per_image == 2 and ckpt.vision_kind == "eva" and ckpt.model_max_length == 8192
    # the written tower and attention are the released ones: frame tokens as upstream computes them from the source
    up, vlm = Upstream(src, bert), VilaModel(ckpt, dtype="float32")
    pixels = up.pixels(frames(3)).numpy()
    features = vlm.tower_features(pixels)
    np.testing.assert_allclose(features, up.eva_forward(torch.from_numpy(pixels)).numpy(), rtol=1e-4, atol=1e-4)
    ids = QuestionTokenizer(ckpt.question_tokenizer_dir)(QUESTION)
    np.testing.assert_allclose(vlm.frame_tokens(features, ids), frame_tokens_np(up, features, QUESTION), rtol=1e-4,
                               atol=1e-4)


def test_a_vila_layout_llama_vid_quantizes_with_its_vlm_att(built, tmp_path, cli):
    """A LLaMA-VID already in the VILA layout (fp16, as `convert` would write it) keeps vlm_att/ through quantize."""
    from vila_edge.checkpoint import SUBFOLDERS
    from vila_edge.commands.convert_llava import write_part_tensors, write_vila_parts
    from vila_edge.llamavid_format import write_att_folder

    src, bert, _ = built
    ckpt = load_checkpoint(src, allow_pickle=True, qformer_tokenizer=str(bert))
    folder = tmp_path / "llama-vid-vila"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(ckpt.config))
    write_vila_parts(ckpt, folder, SUBFOLDERS)
    write_att_folder(ckpt.llamavid, folder / "vlm_att")
    write_part_tensors(ckpt, "vlm_att", folder, progress=False)
    assert load_checkpoint(folder).layout == "vila"
    code, _, err = cli("quantize", folder, "-o", tmp_path / "awq", "--group-size", 64, "--vision", "none", *QUICK_QUANT)
    assert code == 0, err
    written = load_checkpoint(tmp_path / "awq")
    assert written.family.name == "llama-vid" and (tmp_path / "awq" / "vlm_att" / "vocab.txt").is_file()
    assert VilaModel(written, dtype="float32").attention is not None


def test_the_attention_onnx_takes_any_question_length_and_frame_count(built):
    src, bert, out = built
    up = Upstream(src, bert)
    vision = OnnxVision(out / "vision" / VISION_FP32_FILE)
    attention = OnnxAttention(out / "vision" / ATTENTION_FP32_FILE)
    tok = QuestionTokenizer(out / "vlm_att")
    for n, question in ((1, "who?"), (3, QUESTION), (2, LONG_QUESTION)):
        pixels = up.pixels(frames(n, seed=n)).numpy()
        features = vision(pixels)  # the tower alone, class token kept: [n, 17, 176]
        assert features.shape == (n, 17, 176)
        np.testing.assert_allclose(features, up.eva_forward(torch.from_numpy(pixels)).numpy(), rtol=1e-4, atol=1e-4)
        got = attention(features, tok(question))
        assert got.shape == (n, 2, 64)
        np.testing.assert_allclose(got, frame_tokens_np(up, features, question), rtol=1e-4, atol=1e-4)
    assert len(tok(LONG_QUESTION)) > 40


@pytest.mark.parametrize("question", [QUESTION, "WHAT   is thé Man,doing?? [SEP] [DEC] 你好 colors coloring",
                                      "describe " * 400 + "the end", "", "<image>\nwho are they?"])
def test_the_question_tokenizer_is_upstreams_without_transformers(built, question):
    """question.py rebuilds BertTokenizer's pipeline on `tokenizers` (a cpu engine has no transformers): the ids of
    upstream's tokenizer (init_bert + [DEC], truncated on the left to 256), accents, CJK, specials and all."""
    src, bert, out = built
    up = Upstream(src, bert)
    text = " ".join(question.replace("<image>", " ").split())
    want = up.bert_tok([text], truncation=True, max_length=256).input_ids[0]
    assert QuestionTokenizer(out / "vlm_att")(question).tolist() == want


def test_calibration_json_reports_the_frame_token_cosine(built):
    src, bert, out = built
    record = json.loads((out / "vision" / "calibration.json").read_text())
    assert "frame" in record["held_out"]["compared"] and record["held_out"]["cosine_min"] > 0.99
    assert record["tensorrt_fp16"]["attention_fp16_vs_fp32"]["cosine_min"] > 0.999
    assert (out / "vision" / ATTENTION_FP16_FILE).is_file()
    # the int8 tower's frame tokens against fp32 upstream, measured here too (not only what quantize reports)
    up = Upstream(src, bert)
    pixels = up.pixels(frames(4, seed=9)).numpy()
    int8 = OnnxAttention(out / "vision" / ATTENTION_FP32_FILE)(OnnxVision(out / "vision" / VISION_W8A8_FILE)(pixels),
                                                               QuestionTokenizer(out / "vlm_att")(QUESTION))
    fp32 = frame_tokens_np(up, up.eva_forward(torch.from_numpy(pixels)).numpy(), QUESTION)
    assert cosine(int8, fp32).min() > 0.99


def test_media_calibration_goes_through_the_frame_tokens(built, tmp_path):
    """AWQ's media samples hold the image tokens of the question each sample asks (calib.media_embeds)."""
    from vila_edge.quant.calib import MEDIA_QUESTIONS, media_embeds

    src, bert, _ = built
    ckpt = load_checkpoint(src, allow_pickle=True, qformer_tokenizer=str(bert))
    vlm = VilaModel(ckpt, dtype="float32")
    image = frames(1, seed=4)[0]
    samples, _ = media_embeds(vlm, [image], 2, 64, 0, progress=False)
    up = Upstream(src, bert)
    features = up.eva_forward(up.pixels([image])).numpy()
    for sample, question in zip(samples, MEDIA_QUESTIONS):
        want = torch.from_numpy(frame_tokens_np(up, features, question)[0])
        hits = [i for i in range(len(sample) - 1) if torch.allclose(sample[i : i + 2], want, rtol=1e-4, atol=1e-4)]
        assert len(hits) == 1, question  # the two frame tokens, conditioned on this sample's own question


@pytest.fixture(scope="module")
def engines(built, tmp_path_factory):
    """{vision precision: cpu engine folder} of the quantized checkpoint (lm_head fp16: exact with fp32 activations)."""
    _, _, out = built
    root, made = tmp_path_factory.mktemp("llamavid-cpu"), {}
    for vision in ("w8a8", "fp32"):
        made[vision] = root / vision
        code, _, err = run_cli("build-engine", out, "-o", made[vision], "--target", "cpu", "--lm-head", "fp16",
                               "--vision", vision)
        assert code == 0, err
    return made


def test_the_cpu_engine_carries_both_graphs_and_the_bert_vocabulary(built, engines):
    _, bert, _ = built
    manifest = json.loads((engines["w8a8"] / "manifest.json").read_text())
    assert manifest["text"]["family"] == "llama-vid"
    assert manifest["vision"]["file"] == f"vision/{VISION_W8A8_FILE}"
    assert manifest["vision"]["attention_file"] == f"vision/{ATTENTION_FP32_FILE}"
    assert manifest["vision"]["tokens_per_image"] == 2
    engine = CpuEngine(engines["w8a8"], threads=1)
    assert engine.info.tokens_per_image == 2
    assert (engine.info.question_tokenizer_dir / "vocab.txt").read_text() == (bert / "vocab.txt").read_text()


@pytest.mark.parametrize("vision", ["fp32", "w8a8"])
def test_cpu_engine_frame_tokens_match_the_reference(built, engines, vision):
    """The engine's graphs against VilaModel (PyTorch) on the same pixels and features: fp32 to 1e-4; the int8
    tower by cosine."""
    src, bert, out = built
    up, vlm = Upstream(src, bert), VilaModel(load_checkpoint(out), dtype="float32")
    engine = CpuEngine(engines[vision], threads=1)
    ids = QuestionTokenizer(engine.info.question_tokenizer_dir)(QUESTION)
    pixels = up.pixels(frames(5, seed=2)).numpy()
    features = vlm.tower_features(pixels)
    np.testing.assert_allclose(engine.frame_tokens(features, ids), vlm.frame_tokens(features, ids), rtol=1e-4, atol=1e-4)
    got, want = engine.encode_images(pixels, ids), vlm.frame_tokens(features, ids)
    if vision == "fp32":
        np.testing.assert_allclose(engine.tower_features(pixels), features, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    else:
        assert cosine(got, want).min() > 0.99
    clip = Captioner(engine.info, engine).encode([VideoClip(features)], QUESTION)  # a video: one block, 2 per frame
    assert clip.blocks[0].shape == (10, 64)


def test_quantize_build_engine_caption_without_torch(built, engines, tmp_path, cli):
    """The engine captions an image in an interpreter where torch, transformers and onnx cannot import, and its greedy
    tokens (fp32 activations, fp16 lm_head) are those of the torch backend with the same W8A8 graphs (--backend onnx)."""
    _, _, out = built
    image = tmp_path / "frame.png"
    frames(1, seed=7)[0].save(image)
    args = ("--image", image, "--prompt", QUESTION, "--temperature", 0, "--max-new-tokens", 8, "--format", "jsonl")
    code, reference, err = cli("caption", out, "--backend", "onnx", *args)
    assert code == 0, err
    code, torch_reference, err = cli("caption", out, "--backend", "torch", *args)  # PyTorch's fp32 tower and attention
    assert code == 0, err
    (code, answer, err), (fp32_code, fp32_answer, fp32_err) = cli_without_quantize_extra(
        ("caption", engines["w8a8"], *args, "--activations", "fp32"), ("caption", engines["fp32"], *args, "--activations", "fp32"))
    assert code == 0 and fp32_code == 0, err + fp32_err
    answer, reference = json.loads(answer), json.loads(reference)
    assert answer["image_tokens"] == 2 and len(answer["token_ids"]) > 0
    assert answer["token_ids"] == reference["token_ids"]
    assert json.loads(fp32_answer)["token_ids"] == json.loads(torch_reference)["token_ids"]  # fp32 graphs: torch's own


def test_an_engine_without_the_attention_graph_refuses_a_llamavid_question(engines, tmp_path):
    import shutil

    broken = tmp_path / "no-attention"
    shutil.copytree(engines["fp32"], broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["vision"]["attention_file"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    engine = CpuEngine(broken, threads=1)
    captioner = Captioner(engine.info, engine)
    with pytest.raises(CheckpointError, match="no LLaMA-VID attention graph"):
        captioner(frames(1), QUESTION, SamplingParams(max_new_tokens=2))

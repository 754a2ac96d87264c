"""LLaMA-VID's GPU bundle and TensorRT backend on a CPU: the bundle's manifest and files, max_multimodal_len from
--max-frames, the attention plan's profile, and TrtEngine's tower / attention calls against the stand-ins of
tests/standins.py (TensorRT's runtime API and ModelRunnerCpp, which check the calls and script the outputs)."""

import json
import shutil
import sys

import numpy as np
import pytest
import standins
from conftest import QUICK_QUANT, run_cli
from test_trt_runtime import HELP_1_X, ORIN_ENV, STANDIN_TRTLLM_BUILD
from test_trt_vision import stand_in
from tiny_llamavid import build_llamavid, write_bert_folder

from vila_edge.caption import FRAME_BATCH, Captioner, VideoClip
from vila_edge.errors import CheckpointError
from vila_edge.export.trt_llamavid import DEFAULT_MAX_FRAMES, TEXT_ROOM
from vila_edge.generate import SamplingParams
from vila_edge.runtime import trt
from vila_edge.runtime.trt import TrtEngine

QUESTION = "What is the man doing in this video?"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tokenizer_dirs):
    root = tmp_path_factory.mktemp("llamavid-trt")
    bert = write_bert_folder(root / "bert-base-uncased")
    src = build_llamavid(root / "llama-vid-7b-full-224-video-fps-1", tokenizer_dirs["llama"])
    code, _, err = run_cli("quantize", src, "-o", root / "awq", "--group-size", 64, "--allow-pickle",
                           "--qformer-tokenizer", bert, *QUICK_QUANT)
    assert code == 0, err
    return root / "awq"


@pytest.fixture(scope="module")
def bundle(quantized, tmp_path_factory):
    out = tmp_path_factory.mktemp("llamavid-bundle") / "orin"
    code, _, err = run_cli("build-engine", quantized, "-o", out, "--target", "orin")
    assert code == 3, err  # no TensorRT here: the portable bundle
    return out


def test_the_bundle_carries_both_graphs_the_bert_vocabulary_and_frame_sized_limits(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    vision, limits = m["vision"], m["limits"]
    assert vision["onnx"] == "vision/vision_w8a8_fp16.onnx" and vision["attention_onnx"] == "vision/attention_fp16.onnx"
    assert (bundle / vision["onnx"]).is_file() and (bundle / vision["attention_onnx"]).is_file()
    assert vision["attention_input"] == [17, 176]  # the tower's output, class token kept
    assert vision["attention_batch"] == FRAME_BATCH and vision["max_question"] == 256
    assert (bundle / m["text"]["question_tokenizer"] / "vocab.txt").is_file() and m["text"]["family"] == "llama-vid"
    frames = min(DEFAULT_MAX_FRAMES, (limits["max_input_len"] - TEXT_ROOM) // 2)
    assert limits["max_frames"] == frames and limits["max_multimodal_len"] == frames * 2 * limits["max_batch"]
    assert limits["tower_batch"] == 16 and not (bundle / "vision" / "attention_fp32.onnx").exists()


def test_max_frames_sets_max_multimodal_len_and_is_refused_past_max_input_len(quantized, awq, tmp_path, cli):
    code, out, err = cli("build-engine", quantized, "-o", tmp_path / "b", "--target", "orin", "--max-frames", 50,
                         "--dry-run")
    assert code == 0, err
    assert "max_multimodal_len 100" in out
    code, out, err = cli("build-engine", quantized, "-o", tmp_path / "c", "--target", "orin", "--max-frames", 3600)
    assert code == 2 and "--max-frames 3600" in err and "--max-frames 127 or less" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
    code, _, err = cli("build-engine", awq("llama", 64), "-o", tmp_path / "d", "--target", "orin", "--max-frames", 10)
    assert code == 2 and "--max-frames sizes a LLaMA-VID engine" in err


def test_the_attention_plan_profiles_frames_and_question_length(tmp_path, monkeypatch):
    from vila_edge.export.trt_vision import build_attention_plan

    fake = stand_in("10.3")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    built = build_attention_plan(tmp_path / "attention_fp16.onnx", tmp_path / "attention.plan", tmp_path / "cache",
                                 (17, 176), 64, 256, 1 << 30)
    shapes = [c[1:] for c in fake.calls if c[0] == "set_shape"]
    assert shapes == [("image_features", (1, 17, 176), (64, 17, 176), (64, 17, 176)),
                      ("question_ids", (1, 1), (1, 32), (1, 256))]
    assert built["precision"] == "fp16" and built["max_frames"] == 64 and built["max_question"] == 256


def test_build_engine_on_the_device_builds_the_attention_plan(bundle, monkeypatch, tmp_path, cli):
    from vila_edge.export import trt_engine, trt_vision

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "trtllm-build").write_text(STANDIN_TRTLLM_BUILD)
    (bin_dir / "trtllm-build").chmod(0o755)
    (tmp_path / "help.txt").write_text(HELP_1_X)
    for key, value in {"PATH": f"{bin_dir}:/usr/bin:/bin", "RECORD": str(tmp_path / "calls"),
                       "HELP_TEXT": str(tmp_path / "help.txt"), "VILA_EDGE_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(trt_engine, "probe_environment", lambda: (ORIN_ENV, []))
    seen = []

    def plan(name):
        def build(onnx, plan, cache, *args):
            seen.append((name, onnx.name, cache.name, args[:-1]))
            plan.write_bytes(b"plan")
            return {"built": name}
        return build

    monkeypatch.setattr(trt_vision, "build_vision_plan", plan("tower"))
    monkeypatch.setattr(trt_vision, "build_attention_plan", plan("attention"))
    code, _, err = cli("build-engine", bundle, "-o", tmp_path / "engine", "--target", "orin")
    assert code == 0, err
    assert seen == [("tower", "vision_w8a8_fp16.onnx", "timing.cache", ("int8", "pixel_values", (3, 56, 56), 16)),
                    ("attention", "attention_fp16.onnx", "timing.cache", ((17, 176), FRAME_BATCH, 256))]
    m = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert m["vision"]["attention_plan"] == "vision/attention.plan" and m["vision"]["attention_build"] == {"built": "attention"}
    assert (tmp_path / "engine" / "vision" / "attention.plan").is_file() and m["limits"]["max_frames"] > 0
    assert (tmp_path / "engine" / "question_tokenizer" / "vocab.txt").is_file()


@pytest.fixture
def engine(bundle, monkeypatch, tmp_path):
    """The bundle as build-engine on an Orin leaves it, stand-in plans and runner; (TrtEngine, manifest)."""
    streams = standins.install_trt_llm(monkeypatch)
    folder = tmp_path / "engine"
    shutil.copytree(bundle, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m |= {"kind": "engine", "built_with": ORIN_ENV, "llm": {**m["llm"], "engine_dir": "llm"},
          "vision": {**m["vision"], "plan": "vision/vision.plan", "attention_plan": "vision/attention.plan"}}
    (folder / "manifest.json").write_text(json.dumps(m))
    standins.write_engine_config(folder / "llm", m["limits"], m["llm"]["vocab"], m["llm"]["hidden"])
    (folder / "vision/vision.plan").write_bytes(b"stand-in plan")
    (folder / "vision/attention.plan").write_bytes(b"stand-in attention plan")
    fake = standins.tensorrt_module(streams, 17, 176, m["limits"]["tower_batch"])
    standins.add_attention_plan(fake, streams, 2, m["llm"]["hidden"], m["vision"]["attention_batch"])
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt, "probe_environment", lambda: (ORIN_ENV, []))
    return TrtEngine(folder), m, streams


def test_trt_engine_runs_the_tower_then_the_attention_plan_per_question(engine):
    backend, m, streams = engine
    fake = sys.modules["tensorrt"]
    captioner = Captioner(backend.info, backend)
    ids = captioner.question_tokenizer(QUESTION)
    features = np.random.default_rng(0).normal(size=(FRAME_BATCH + 6, 17, 176)).astype(np.float32)
    got = backend.frame_tokens(features, ids)
    assert got.shape == (FRAME_BATCH + 6, 2, m["llm"]["hidden"])
    np.testing.assert_allclose(got[:, 0, 0], features.reshape(len(features), -1).mean(1) + ids.sum(), rtol=1e-4)
    assert [(r["batch"], r["question"]) for r in fake.attention_runs] == [(FRAME_BATCH, len(ids)), (6, len(ids))]
    assert all(("synchronize", r["stream"]) in streams.log for r in fake.attention_runs)
    pixels = np.random.default_rng(1).uniform(-1, 1, (20, 3, 56, 56)).astype(np.float32)
    assert backend.tower_features(pixels).shape == (20, 17, 176)
    assert [r["batch"] for r in fake.runs] == [16, 4]  # the tower plan's profile: tower_batch frames a run


def test_a_video_caption_on_the_trt_backend_fills_the_prompt_table_with_every_frame(engine):
    backend, m, _ = engine
    captioner = Captioner(backend.info, backend)
    clip = VideoClip(np.random.default_rng(2).normal(size=(30, 17, 176)).astype(np.float32))
    answer = captioner([clip], QUESTION, SamplingParams(max_new_tokens=4, temperature=0))
    assert answer.image_tokens == 60 and answer.token_ids == standins.ModelRunnerCpp.script[:4]
    (call,) = standins.ModelRunnerCpp.instances[-1].calls
    vocab = m["llm"]["vocab"]
    assert call["table"].shape == (1, 60, m["llm"]["hidden"])
    assert [i for i in call["ids"] if i >= vocab] == list(range(vocab, vocab + 60))  # one block, in table order
    too_long = VideoClip(np.zeros((m["limits"]["max_frames"] + 1, 17, 176), np.float32))
    with pytest.raises(Exception, match="built for .* frames .*--max-frames"):
        captioner([too_long], QUESTION, SamplingParams(max_new_tokens=1))


def test_a_trt_engine_without_the_attention_plan_refuses_a_llamavid_question(engine):
    backend, _, _ = engine
    backend.attention = None
    with pytest.raises(CheckpointError, match="no LLaMA-VID attention graph"):
        backend.frame_tokens(np.zeros((1, 17, 176), np.float32), np.array([2, 3]))

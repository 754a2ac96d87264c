"""`caption LLAMAVID --video`: frames at --fps (upstream load_video), the tower's features cached on disk and reused,
resumable after Ctrl-C, a video too long for the context refused with the rate that fits."""

import base64
import json

import numpy as np
import pytest
from coded_video import write_coded_video
from tiny_llamavid import build_llamavid, write_bert_folder
from upstream_llamavid import load_video_indices

from vila_edge.caption import Captioner, VideoClip
from vila_edge.capture import CaptureOptions
from vila_edge.checkpoint import load_checkpoint
from vila_edge.commands.backends import BackendOptions
from vila_edge.commands.caption import caption_media
from vila_edge.commands.long_video import VideoOptions
from vila_edge.feature_cache import FeatureCache
from vila_edge.generate import SamplingParams
from vila_edge.model.vlm import VilaModel
from vila_edge.video import iter_frames, sample_plan

QUESTION = "what happens in this video?"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer_dirs):
    root = tmp_path_factory.mktemp("llamavid-video")
    bert = write_bert_folder(root / "bert-base-uncased")
    model = build_llamavid(root / "llama-vid-7b-full-224-video-fps-1", tokenizer_dirs["llama"])
    return model, bert


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {"long": write_coded_video(root / "long.avi", 300, fps=1),  # 300 s at 1 fps: 300 sampled frames
            "short": write_coded_video(root / "short.avi", 90, fps=30)}  # 3 s at 30 fps: frames 0, 30, 60


def flags(folder):
    model, bert = folder
    return (model, "--allow-pickle", "--qformer-tokenizer", bert)


def answer(folder, video, cache, question=QUESTION, fps=None, **opts):
    model, bert = folder
    backend = BackendOptions(allow_pickle=True, qformer_tokenizer=str(bert), dtype="float32")
    record, _ = caption_media(str(model), None, str(video), None, question, SamplingParams(max_new_tokens=6,
                              temperature=0.0), backend, None, CaptureOptions(fps=fps),
                              video_opts=VideoOptions(feature_cache=str(cache), **opts))
    return record


def test_300_frames_at_one_fps_are_600_image_tokens(folder, videos, cli, tmp_path):
    code, out, err = cli("caption", *flags(folder), "--video", videos["long"], "--prompt", QUESTION, "--format",
                         "jsonl", "--max-new-tokens", 4, "--feature-cache", tmp_path / "cache")
    assert code == 0, err
    record = json.loads(out)
    assert record["images"] == 300 and record["image_tokens"] == 600
    assert record["conv_mode"] == "imgsp_v1"


def test_frames_are_sampled_as_upstream_load_video(videos):
    plan = sample_plan(videos["short"])
    assert list(plan.indices) == load_video_indices(90, 30.0) == [0, 30, 60]


def test_a_second_question_reuses_the_cached_features(folder, videos, tmp_path, monkeypatch):
    calls = []
    tower = VilaModel.tower_features
    monkeypatch.setattr(VilaModel, "tower_features", lambda self, x: calls.append(len(x)) or tower(self, x))
    first = answer(folder, videos["short"], tmp_path / "cache", fps=10)
    assert sum(calls) == 30 and first["image_tokens"] == 60  # every 3rd frame of 90
    calls.clear()
    again = answer(folder, videos["short"], tmp_path / "cache", fps=10)
    other = answer(folder, videos["short"], tmp_path / "cache", question="who is in the scene?", fps=10)
    assert calls == [] and again["token_ids"] == first["token_ids"]
    assert other["prompt_tokens"] != first["prompt_tokens"] or other["token_ids"] != first["token_ids"]
    no_cache = answer(folder, videos["short"], tmp_path / "unused", fps=10, no_feature_cache=True)
    assert sum(calls) == 30 and not (tmp_path / "unused").exists()
    assert no_cache["token_ids"] == first["token_ids"]


def test_an_interrupted_run_resumes_where_it_stopped(folder, videos, tmp_path, monkeypatch):
    whole = answer(folder, videos["long"], tmp_path / "whole", max_frames=100)
    calls = []
    tower = VilaModel.tower_features

    def interrupted(self, x):
        if len(calls) == 6:  # 6 batches of 8 frames: the first chunk of 32 is stored, the second is not
            raise KeyboardInterrupt
        calls.append(len(x))
        return tower(self, x)

    monkeypatch.setattr(VilaModel, "tower_features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        answer(folder, videos["long"], tmp_path / "cache", max_frames=100)
    calls.clear()
    monkeypatch.setattr(VilaModel, "tower_features", lambda self, x: calls.append(len(x)) or tower(self, x))
    resumed = answer(folder, videos["long"], tmp_path / "cache", max_frames=100)
    assert sum(calls) == 100 - 32 and resumed["token_ids"] == whole["token_ids"]


def test_a_corrupt_cache_is_rebuilt_with_a_message(folder, videos, tmp_path, capsys):
    first = answer(folder, videos["short"], tmp_path / "cache", fps=10)
    chunk = next((tmp_path / "cache").rglob("*.npy"))
    chunk.write_bytes(chunk.read_bytes()[:-40])
    capsys.readouterr()
    again = answer(folder, videos["short"], tmp_path / "cache", fps=10)
    assert chunk.name in capsys.readouterr().err and again["token_ids"] == first["token_ids"]


def test_a_video_longer_than_the_context_is_refused_with_what_fits(folder, videos, cli, tmp_path):
    code, _, err = cli("caption", *flags(folder), "--video", videos["long"], "--prompt", QUESTION,
                       "--max-new-tokens", 7800, "--feature-cache", tmp_path / "cache")
    assert code != 0 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "300 frames at --fps 1 are 600 image tokens" in line and "of the 8192" in line
    frames = int(line.split("--max-frames ")[1].split()[0])
    prompt = int(line.split(" that is ")[1].split()[0]) - 600 - 7800
    assert prompt + 2 * frames + 7800 <= 8192 < prompt + 2 * (frames + 1) + 7800
    assert not (tmp_path / "cache").exists()  # refused before any frame was decoded


def test_video_options_belong_to_their_family(folder, videos, cli, tiny):
    code, _, err = cli("caption", *flags(folder), "--video", videos["short"], "--prompt", QUESTION, "--num-frames", 4)
    assert code != 0 and "--max-frames" in err.strip().splitlines()[-1]
    code, _, err = cli("caption", tiny(), "--video", videos["short"], "--prompt", QUESTION, "--max-frames", 4)
    assert code != 0 and "--num-frames" in err.strip().splitlines()[-1]


def test_features_cached_in_float16_stay_close_to_float32(folder, videos, tmp_path):
    model, bert = folder
    vlm = VilaModel(load_checkpoint(model, True, qformer_tokenizer=str(bert)), dtype="float32")
    captioner = Captioner(vlm.ckpt, vlm)
    plan = sample_plan(videos["short"], fps=10)
    cached = FeatureCache(tmp_path).features(plan, {"k": 1}, vlm.tower_features, captioner.preprocess, progress=False)
    exact = vlm.tower_features(np.stack([captioner.preprocess(im) for _, im in iter_frames(plan)]))
    assert cached.dtype == np.float16
    np.testing.assert_allclose(cached.astype(np.float32), exact, rtol=2e-3, atol=2e-3)


def test_a_served_video_is_one_clip_at_one_frame_per_second(folder, tmp_path):
    from served import Running

    model, bert = folder
    vlm = VilaModel(load_checkpoint(model, True, qformer_tokenizer=str(bert)), dtype="float32")
    captioner = Captioner(vlm.ckpt, vlm)
    path = write_coded_video(tmp_path / "clip.mp4", 50, fps=10)  # 5 s: frames 0, 10, 20, 30, 40
    url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
    running = Running(None, captioner=captioner)
    try:
        r = running.client().chat.completions.create(model="m", max_tokens=6, temperature=0, messages=[
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": QUESTION}]}])
    finally:
        running.stop()
    clip = VideoClip(frames=[im for _, im in iter_frames(sample_plan(path))])
    want = captioner([clip], QUESTION, SamplingParams(max_new_tokens=6, temperature=0.0))
    assert len(clip) == 5 and r.usage.prompt_tokens_details.image_tokens == want.image_tokens == 10
    assert r.choices[0].message.content == want.text


def test_inspect_reads_the_released_folder(folder, cli):
    code, out, err = cli("inspect", *flags(folder))
    assert code == 0, err
    assert "family llama-vid" in out and "q-former     qformer_pretrain_freeze: 4-layer BERT" in out
    assert "2 per image; a video's frames at --fps (default 1) in one image place" in out
    code, out, _ = cli("inspect", *flags(folder), "--format", "json")
    assert json.loads(out)["llamavid"]["num_query"] == 8

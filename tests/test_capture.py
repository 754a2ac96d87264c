"""`caption ENGINE --source`: a generated video file and an image folder through the loop, sampled
deterministically or played in real time (dropping frames); --record and --alert; a 2,000-frame soak;
bad sources fail without a traceback. RTSP: test_rtsp.py."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vila_edge.demo import write_sample_image


@pytest.fixture
def engine(caption_engine):
    return caption_engine


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 95-frame MJPG clip at 30 fps whose frames differ (a moving bar)."""
    import cv2

    path = tmp_path_factory.mktemp("clips") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (96, 64))
    for i in range(95):
        frame = np.full((64, 96, 3), 40, np.uint8)
        frame[:, i % 96 : i % 96 + 8] = (0, 200, 255)
        writer.write(frame)
    writer.release()
    return path


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_a_video_file_gives_one_caption_per_sampled_frame(engine, clip, cli):
    code, out, err = cli("caption", engine, "--source", clip, "--every", 20, "--prompt", "Describe the image.",
                         "--max-new-tokens", 3, "--format", "jsonl")
    assert code == 0, err
    got = records(out)
    assert [r["frame_index"] for r in got] == [0, 20, 40, 60, 80]
    assert [r["timestamp"] for r in got] == pytest.approx([0, 20 / 30, 40 / 30, 60 / 30, 80 / 30], abs=1e-3)
    assert all(r["dropped_frames"] == 0 and r["source"] == str(clip) and r["token_ids"] for r in got)
    assert {"text", "ttft_s", "decode_tok_s"} <= set(got[0])


def test_the_same_frame_gets_the_same_caption_as_a_single_image_question(engine, clip, cli, tmp_path):
    """The loop adds nothing to the prompt: frame 20 captioned alone equals `caption --image` of that frame."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 20)
    ok, bgr = cap.read()
    assert ok
    cv2.imwrite(str(tmp_path / "f20.png"), bgr)
    args = ("--prompt", "Describe the image.", "--max-new-tokens", 4, "--format", "jsonl")
    loop = records(cli("caption", engine, "--source", clip, "--every", 20, "--max-captions", 2, *args)[1])
    single = json.loads(cli("caption", engine, "--image", tmp_path / "f20.png", *args)[1])
    assert len(loop) == 2 and loop[1]["token_ids"] == single["token_ids"]


def test_a_window_sends_the_recent_frames_together(engine, clip, cli):
    code, out, err = cli("caption", engine, "--source", clip, "--every", 30, "--window", 2, "--prompt", "What changed?",
                         "--max-new-tokens", 2, "--format", "jsonl")
    assert code == 0, err
    assert [r["frames"] for r in records(out)] == [[0], [0, 30], [30, 60], [60, 90]]


def test_a_window_encodes_each_frame_once_and_gives_the_uncached_tokens(captioner, clip):
    """--window 3: each frame goes through the tower once while it stays in the window, and every caption's tokens
    are those of a captioner that encodes the window's frames afresh (and prefills its prompt from position 0)."""
    from vila_edge.capture import caption_frames, open_source
    from vila_edge.generate import SamplingParams

    params = SamplingParams(max_new_tokens=4)
    live = captioner()
    towered = []
    encode_images = live.model.encode_images
    live.model.encode_images = lambda pixels, *a: towered.append(len(pixels)) or encode_images(pixels, *a)
    got = list(caption_frames(live, open_source(str(clip), every=15), "What changed?", params, window=3))
    assert [r["frames"] for r in got][:4] == [[0], [0, 15], [0, 15, 30], [15, 30, 45]]
    assert towered == [1] * len(got)  # one new frame per caption; the others' image tokens kept
    assert live.model.reused_positions > 0  # the prompt's text before the images, from the cache
    fresh = captioner()
    fresh.model.prefix_reuse = False
    source = open_source(str(clip), every=15)
    frames = {f.index: f.image for f in source}
    source.close()
    for r in got:
        fresh.keep_encoded(3)  # an empty cache each caption: every frame encoded again
        assert fresh([frames[i] for i in r["frames"]], "What changed?", params).token_ids == r["token_ids"]


def test_an_image_folder_in_name_order(engine, cli, tmp_path):
    for i, seed in ((3, 9), (1, 1), (2, 8)):  # seeds the tiny model tells apart
        write_sample_image(tmp_path / f"frame_{i}.png", size=64, seed=seed)
    (tmp_path / "notes.txt").write_text("not an image")
    code, out, err = cli("caption", engine, "--source", tmp_path, "--prompt", "Describe the image.", "--max-new-tokens", 2,
                         "--max-captions", 2)
    assert code == 0, err
    assert out.splitlines()[0].startswith("[frame 0 @ 0.00 s] ") and len(out.splitlines()) == 2
    args = ("--prompt", "Describe the image.", "--max-new-tokens", 4, "--format", "jsonl")
    loop = records(cli("caption", engine, "--source", tmp_path, *args)[1])
    single = {i: json.loads(cli("caption", engine, "--image", tmp_path / f"frame_{i}.png", *args)[1])["token_ids"] for i in (1, 2, 3)}
    assert len({tuple(t) for t in single.values()}) == 3  # the images tell apart, so the order below is checked
    assert [r["token_ids"] for r in loop] == [single[1], single[2], single[3]]


@pytest.mark.parametrize("source,message", [
    ("missing.mp4", "no such video file or folder"),
    ("7", "camera 7 cannot be opened"),
    ("/dev/video9", "camera /dev/video9 cannot be opened"),
    ("videotestsrc ! videoconvert ! appsink", "built without GStreamer"),  # PyPI's OpenCV, as installed here
])
def test_bad_sources_fail_clearly(source, message, engine, cli):
    code, _, err = cli("caption", engine, "--source", source, "--prompt", "hi")
    assert code != 0 and message in err and "Traceback" not in err


def test_an_unreadable_file_and_an_empty_folder(engine, cli, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    code, _, err = cli("caption", engine, "--source", tmp_path / "broken.mp4", "--prompt", "hi")
    assert code != 0 and "OpenCV cannot open" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("caption", engine, "--source", tmp_path / "empty", "--prompt", "hi")
    assert code != 0 and "no images" in err
    code, _, err = cli("caption", engine, "--source", tmp_path / "empty", "--prompt", "hi", "--every", 0)
    assert code == 2 and "--every 0" in err
    code, _, err = cli("caption", engine, "--prompt", "hi", "--every", 5)
    assert code == 2 and "sample a --source" in err
    code, _, err = cli("caption", engine, "--prompt", "hi", "--record", tmp_path / "x.mp4", "--alert", "cat")
    assert code == 2 and "--record, --alert: these sample a --source" in err


@pytest.mark.parametrize("extra,message", [
    (("--every", 5, "--fps", 2), "--every and --fps both choose"),
    (("--fps", 0), "--fps 0"),
    (("--alert", "(unclosed"), "not a regular expression"),
    (("--record", "out.gif"), "write a .mp4 or .avi file"),
])
def test_contradictory_stream_options(extra, message, engine, clip, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("caption", engine, "--source", clip, "--prompt", "hi", *extra)
    assert code == 2 and message in err and out == ""


def test_realtime_on_a_folder_is_refused(engine, cli, tmp_path):
    write_sample_image(tmp_path / "a.png", size=32)
    code, _, err = cli("caption", engine, "--source", tmp_path, "--prompt", "hi", "--realtime")
    assert code == 2 and "--realtime plays a video file" in err


def test_fps_samples_by_the_source_clock(engine, clip, cli):
    """--fps 3 on a 30 fps file: a frame every 1/3 s of the file, i.e. every 10th."""
    code, out, err = cli("caption", engine, "--source", clip, "--fps", 3, "--prompt", "hi", "--max-new-tokens", 1,
                         "--format", "jsonl")
    assert code == 0, err
    assert [r["frame_index"] for r in records(out)] == list(range(0, 95, 10))


def test_sampler_every_and_fps():
    from vila_edge.capture import FrameSampler as Sampler

    every = Sampler(every=4)
    assert [i for i in range(10) if every.take(i, i / 30)] == [0, 4, 8]
    fps = Sampler(fps=2)  # irregular clock, as a live source has: the first frame in each half second
    times = [0.0, 0.1, 0.45, 0.52, 0.9, 1.7, 1.8, 2.01]
    assert [t for t in times if fps.take(0, t)] == [0.0, 0.52, 1.7, 2.01]


@pytest.fixture(scope="module")
def fast_clip(tmp_path_factory):
    """120 frames at 1000 fps: in real time a frame every ms, faster than the model captions (a tiny
    model still takes a few ms for the vision ONNX and the 8 tokens asked for)."""
    import cv2

    path = tmp_path_factory.mktemp("clips") / "fast.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 1000.0, (64, 48))
    for i in range(120):
        writer.write(np.full((48, 64, 3), 2 * i, np.uint8))
    writer.release()
    return path


def test_realtime_drops_the_frames_that_arrive_while_the_model_is_busy(captioner, fast_clip):
    """Every frame is sampled (--every 1) and each one is either captioned or dropped for a newer one:
    captions + dropped = 120, the captions' frames in order, the last frame of the file captioned."""
    from vila_edge.capture import caption_frames, open_source
    from vila_edge.generate import SamplingParams

    source = open_source(str(fast_clip), realtime=True)
    got = list(caption_frames(captioner(), source, "Describe the image.", SamplingParams(max_new_tokens=8)))
    indices = [r["frame_index"] for r in got]
    assert source.dropped > 0 and len(got) + source.dropped == source.sampled == 120
    assert indices == sorted(set(indices)) and indices[-1] == 119
    assert [r["dropped_frames"] for r in got] == sorted(r["dropped_frames"] for r in got)
    assert got[-1]["dropped_frames"] == source.dropped
    assert got[-1]["timestamp"] == pytest.approx(119 / 1000, abs=1e-4)  # the file's clock, not the wall's


def test_record_draws_the_latest_caption_and_saves_a_clip_per_alert(engine, clip, cli, tmp_path):
    import cv2

    out = tmp_path / "captioned.mp4"
    code, stdout, err = cli("caption", engine, "--source", clip, "--every", 30, "--prompt", "Describe the image.",
                            "--max-new-tokens", 6, "--format", "jsonl", "--record", out, "--alert", ".")
    assert code == 0, err
    got = records(stdout)
    assert [r["frame_index"] for r in got] == [0, 30, 60, 90] and all(r["text"] for r in got)
    # "." matches every caption; frame 30 comes within the first clip's 3 s tail, which it extends
    assert all(r["alert"] for r in got) and {r["alert_clip"] for r in got} == {str(tmp_path / "captioned.alert-001.mp4")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captioned.alert-001.mp4", "captioned.mp4"]

    recorded, source = cv2.VideoCapture(str(out)), cv2.VideoCapture(str(clip))
    assert recorded.get(cv2.CAP_PROP_FRAME_COUNT) == 95
    assert (recorded.get(cv2.CAP_PROP_FRAME_WIDTH), recorded.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (96, 64)
    band = []  # the bottom rows, where the caption is drawn, against the same rows of the source
    for _ in range(95):
        ok1, a = recorded.read()
        ok2, b = source.read()
        assert ok1 and ok2
        band.append(np.abs(a[-12:].astype(int) - b[-12:].astype(int)).mean())
    assert min(band) > 10  # every frame carries a caption: frame 0 is written after its own
    clip_frames = cv2.VideoCapture(str(tmp_path / "captioned.alert-001.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)
    assert clip_frames == 95  # frame 0, then 3 s (90 frames) after frame 90's alert, cut by the end of the file

    code, _, err = cli("caption", engine, "--source", clip, "--prompt", "hi", "--record", out)
    assert code == 2 and "exists" in err


def test_no_alert_when_the_regex_does_not_match(engine, clip, cli, tmp_path):
    out = tmp_path / "quiet.avi"
    code, stdout, err = cli("caption", engine, "--source", clip, "--every", 40, "--prompt", "hi", "--max-new-tokens", 3,
                            "--format", "jsonl", "--record", out, "--alert", "zqxj-never")
    assert code == 0, err
    assert all("alert" not in r and "alert_clip" not in r for r in records(stdout))
    assert [p.name for p in tmp_path.iterdir()] == ["quiet.avi"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_a_2000_frame_soak_keeps_memory_flat(captioner, tmp_path):
    """2,000 frames of 320x240 (225 KB each decoded) played in real time at 400 fps through the capture
    thread, the recorder with alerts, and a window of 4: a leaked frame a step would add 450 MB."""
    import cv2

    from vila_edge.capture import caption_frames, open_source
    from vila_edge.generate import SamplingParams
    from vila_edge.record import Recorder

    path = tmp_path / "soak.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 400.0, (320, 240))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (240, 320, 3), np.uint8)
    for i in range(2000):
        writer.write(np.roll(noise, 4 * i, axis=1))
    writer.release()

    source = open_source(str(path), realtime=True)
    recorder = Recorder(tmp_path / "soak.mp4", source.fps, alerts=True)
    source.tap = recorder.write
    rss = []
    loop = caption_frames(captioner(), source, "Describe the image.", SamplingParams(max_new_tokens=2),
                          window=4, alert=re.compile("a"), recorder=recorder)
    for record in loop:
        rss.append((record["frame_index"], _rss_mb()))
    recorder.close()
    assert source.sampled == 2000 and rss[-1][0] == 1999
    # after the window, the alert pre-roll (2 s of JPEG frames: 800 at 400 fps, ~40 MB of noise) and the allocator fill
    settled = [mb for index, mb in rss if index >= recorder.recent.maxlen + 100]
    assert max(settled) - min(settled) < 40, rss

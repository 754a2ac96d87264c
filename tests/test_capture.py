"""`caption ENGINE --source`: a generated video file and an image folder through the loop, sampled
deterministically; bad sources fail without a traceback."""

import json

import numpy as np
import pytest

from vila_edge.demo import write_sample_image


@pytest.fixture(scope="module")
def engine(awq, tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("capture") / "cpu"
    code, _, err = run_cli("build-engine", awq("llama", 32), "-o", out, "--target", "cpu", "--conv-mode", "vicuna_v1")
    assert code == 0, err
    return out


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
                         "--max-new-tokens", 3, "--format", "jsonl")  # fmt: skip
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
                         "--max-new-tokens", 2, "--format", "jsonl")  # fmt: skip
    assert code == 0, err
    assert [r["frames"] for r in records(out)] == [[0], [0, 30], [30, 60], [60, 90]]


def test_an_image_folder_in_name_order(engine, cli, tmp_path):
    for i in (3, 1, 2):
        write_sample_image(tmp_path / f"frame_{i}.png", size=64, seed=i)
    (tmp_path / "notes.txt").write_text("not an image")
    code, out, err = cli("caption", engine, "--source", tmp_path, "--prompt", "Describe the image.", "--max-new-tokens", 2,
                         "--max-captions", 2)  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[0].startswith("[frame 0 @ 0.00 s] ") and len(out.splitlines()) == 2
    args = ("--prompt", "Describe the image.", "--max-new-tokens", 4, "--format", "jsonl")
    loop = records(cli("caption", engine, "--source", tmp_path, *args)[1])
    single = {i: json.loads(cli("caption", engine, "--image", tmp_path / f"frame_{i}.png", *args)[1])["token_ids"] for i in (1, 2, 3)}
    assert len({tuple(t) for t in single.values()}) == 3  # the images tell apart, so the order below is checked
    assert [r["token_ids"] for r in loop] == [single[1], single[2], single[3]]


@pytest.mark.parametrize("source,message", [
    ("missing.mp4", "no such video file or folder"),
    ("0", "live sources"),
    ("rtsp://127.0.0.1:8554/live", "live sources"),
])  # fmt: skip
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

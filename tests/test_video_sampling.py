"""vila_edge.video against LLaMA-VID's frame sampling (llamavid/serve/cli.py::load_video, decord), on small videos
written here whose frames show their own number (coded_video.py)."""

import struct

import numpy as np
import pytest
from coded_video import decoded_numbers, frame_number, write_coded_video

import vila_edge.video as video
from vila_edge.errors import MediaError, UsageError
from vila_edge.video import iter_frames, sample_plan


def upstream_indices(avg_fps: float, n_frames: int, fps: float = 1) -> list[int]:
    """LLaMA-VID's load_video, with decord's vr.get_avg_fps() and len(vr) given: the step is the rounded ratio of
    the video's rate to the sampling rate, counted from frame 0."""
    step = round(avg_fps / fps)
    return [i for i in range(0, n_frames, step)]


def in_range(indices: list[int], avg_fps: float, start: float, end: float, step: int) -> list[int]:
    """The frames whose time lies in [start, end), then every step-th of them from the first."""
    return [i for i in indices if start <= i / avg_fps < end][::step]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {
        "avi30": write_coded_video(root / "v30.avi", 90, fps=30),
        "mp430": write_coded_video(root / "v30.mp4", 90, fps=30),
        "avi25": write_coded_video(root / "v25.avi", 50, fps=25),
    }


@pytest.mark.parametrize("fps", [1, 2, 0.5, 3, 7, 10, 30])
def test_indices_are_llamavid_load_video_at_30_fps(clips, fps):
    plan = sample_plan(clips["avi30"], fps=fps)
    assert plan.indices == tuple(upstream_indices(30.0, 90, fps))
    assert (plan.avg_fps, plan.total_frames, plan.duration_s) == (30.0, 90, 3.0)
    assert plan.timestamps_s == pytest.approx([i / 30 for i in plan.indices])


@pytest.mark.parametrize("fps", [1, 2, 4, 6])
def test_a_ratio_that_rounds_is_rounded_as_python_does(clips, fps):
    # 25 / 2 = 12.5 rounds to 12 and 25 / 6 = 4.17 to 4: Python's round, as upstream
    plan = sample_plan(clips["avi25"], fps=fps)
    assert plan.indices == tuple(upstream_indices(25.0, 50, fps))
    assert plan.indices[:3] == {1: (0, 25), 2: (0, 12, 24), 4: (0, 6, 12), 6: (0, 4, 8)}[fps][:3]


def test_a_rate_above_the_videos_own_takes_every_frame(clips):
    # upstream's step would be round(30 / 100) = 0, which range() refuses; the guard keeps step >= 1
    assert sample_plan(clips["avi30"], fps=100).indices == tuple(range(90))


@pytest.mark.parametrize("start, end, fps", [(1.0, 2.5, 1), (1.0, 2.5, 2), (0.5, None, 1), (None, 1.0, 10),
                                             (0.99, 1.01, 30), (1.2, 3.5, 1)])
def test_start_and_end_restrict_the_range_and_the_step_counts_from_its_first_frame(clips, start, end, fps):
    plan = sample_plan(clips["avi30"], fps=fps, start=start, end=end)
    lo, hi = start if start is not None else 0.0, end if end is not None else float("inf")
    assert plan.indices == tuple(in_range(list(range(90)), 30.0, lo, hi, round(30 / fps)))
    assert all(lo <= t < hi for t in plan.timestamps_s)


def test_start_and_end_examples(clips):
    assert sample_plan(clips["avi30"], fps=1, start=1.0, end=2.5).indices == (30, 60)
    assert sample_plan(clips["avi30"], fps=1, start=1.2).indices == (36, 66)  # 1.2 s is frame 36, then every 30th


@pytest.mark.parametrize("fps, max_frames", [(30, 4), (30, 7), (10, 5), (30, 1), (1, 3), (1, 10)])
def test_max_frames_thins_evenly_over_the_whole_range(clips, fps, max_frames):
    plan = sample_plan(clips["avi30"], fps=fps, max_frames=max_frames)
    full = upstream_indices(30.0, 90, fps)
    if len(full) <= max_frames:
        assert plan.indices == tuple(full)
    else:
        assert plan.indices == tuple(full[int(k)] for k in np.linspace(0, len(full) - 1, max_frames))
        assert len(set(plan.indices)) == max_frames and plan.indices[0] == 0
        assert max_frames == 1 or plan.indices[-1] == full[-1]
    assert sample_plan(clips["avi30"], fps=30, max_frames=4).indices == (0, 29, 59, 89)


@pytest.mark.parametrize("clip", ["avi30", "mp430"])
def test_the_decoded_frames_are_the_planned_ones(clips, clip):
    assert decoded_numbers(clips[clip]) == list(range(90))  # the coding survives this container
    plan = sample_plan(clips[clip], fps=7, start=0.2)
    frames = list(iter_frames(plan))
    assert [pos for pos, _ in frames] == list(range(len(plan)))
    assert [frame_number(image) for _, image in frames] == list(plan.indices)
    assert all(image.mode == "RGB" and image.size == (32, 32) for _, image in frames)


class CountingCapture:
    """The real OpenCV capture, counting its grab(), retrieve() and set() calls; `seek_error` frames added to a seek
    make it land elsewhere, as an inexact seek in some containers does."""

    def __init__(self, cap, counts, seek_error=0):
        self.cap, self.counts, self.seek_error = cap, counts, seek_error

    def set(self, prop, value):
        self.counts["set"] = self.counts.get("set", 0) + 1
        return self.cap.set(prop, value + self.seek_error)

    def get(self, prop):
        return self.cap.get(prop)

    def grab(self):
        self.counts["grab"] += 1
        return self.cap.grab()

    def retrieve(self):
        self.counts["retrieve"] += 1
        return self.cap.retrieve()

    def release(self):
        self.cap.release()


def test_skipped_positions_are_never_retrieved(clips, monkeypatch):
    plan = sample_plan(clips["avi30"], fps=10)  # 30 frames: 0, 3, ..., 87
    counts = {"grab": 0, "retrieve": 0}
    real = video.open_video
    monkeypatch.setattr(video, "open_video", lambda path: CountingCapture(real(path), counts))
    frames = list(iter_frames(plan, skip=set(range(0, 20))))
    assert [pos for pos, _ in frames] == list(range(20, 30))
    assert [frame_number(image) for _, image in frames] == list(plan.indices[20:])
    assert counts == {"grab": plan.indices[-1] + 1, "retrieve": 10}  # read up to the last wanted frame, no further
    assert list(iter_frames(plan, skip=set(range(30)))) == []


@pytest.mark.parametrize("clip", ["avi30", "mp430"])
def test_a_long_gap_is_sought_over_and_lands_on_the_right_frame(clips, monkeypatch, clip):
    plan = sample_plan(clips[clip], fps=30)
    counts = {"grab": 0, "retrieve": 0}
    real = video.open_video
    monkeypatch.setattr(video, "open_video", lambda path: CountingCapture(real(path), counts))
    frames = list(iter_frames(plan, skip=set(range(60)), seek_after_s=0.5))
    assert [frame_number(image) for _, image in frames] == list(range(60, 90))
    assert counts == {"grab": 30, "retrieve": 30, "set": 1}  # frames 0-59 were never read


@pytest.mark.parametrize("seek_error", [-3, 2])
def test_an_inexact_seek_is_caught_and_the_video_read_through(clips, monkeypatch, seek_error):
    plan = sample_plan(clips["mp430"], fps=10)
    counts = {"grab": 0, "retrieve": 0}
    real = video.open_video
    monkeypatch.setattr(video, "open_video", lambda path: CountingCapture(real(path), counts, seek_error))
    frames = list(iter_frames(plan, skip=set(range(20)), seek_after_s=1.0))
    assert [frame_number(image) for _, image in frames] == list(plan.indices[20:])
    assert counts["set"] == 1 and counts["retrieve"] == 10  # one seek tried, then frame by frame from frame 0


def one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_errors_are_one_line_naming_the_file(clips, tmp_path):
    with pytest.raises(MediaError) as e:
        sample_plan(tmp_path / "none.mp4")
    one_line(e, "none.mp4", "no such video file")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(MediaError) as e:
        sample_plan(garbage)
    one_line(e, "garbage.mp4")
    for bad in (0, -1, float("nan")):
        with pytest.raises(UsageError) as e:
            sample_plan(clips["avi30"], fps=bad)
        one_line(e, "v30.avi", "fps")
    with pytest.raises(UsageError) as e:
        sample_plan(clips["avi30"], start=2.0, end=2.0)
    one_line(e, "v30.avi", "start")
    with pytest.raises(MediaError) as e:
        sample_plan(clips["avi30"], start=5.0)  # the video is 3 s long
    one_line(e, "v30.avi", "no frame in", "3.000 s")
    for bad in (0, 2.5):
        with pytest.raises(UsageError) as e:
            sample_plan(clips["avi30"], max_frames=bad)
        one_line(e, "v30.avi", "max_frames")
    with pytest.raises(UsageError) as e:
        sample_plan(clips["avi30"], start=float("nan"))
    one_line(e, "v30.avi", "start nan")
    with pytest.raises(ValueError, match="must increase"):
        video.VideoPlan(clips["avi30"], 30.0, 90, (30, 0), (1.0, 0.0), 3.0)


def test_a_container_that_overstates_its_frame_count_is_counted_for_real(clips, tmp_path):
    data = bytearray(clips["avi30"].read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")  # dwTotalFrames, and the stream header's dwLength
    struct.pack_into("<I", data, avih + 8 + 16, 300)
    struct.pack_into("<I", data, strh + 8 + 32, 300)
    lying = tmp_path / "lying.avi"
    lying.write_bytes(bytes(data))
    import cv2

    assert cv2.VideoCapture(str(lying)).get(cv2.CAP_PROP_FRAME_COUNT) == 300  # the lie reaches OpenCV
    plan = sample_plan(lying, fps=1)
    assert (plan.total_frames, plan.indices, plan.duration_s) == (90, (0, 30, 60), 3.0)


def test_a_video_shortened_after_planning_is_an_error_not_a_wrong_frame(tmp_path):
    clip = write_coded_video(tmp_path / "v.avi", 90)
    plan = sample_plan(clip, fps=1)
    write_coded_video(clip, 40)
    with pytest.raises(MediaError) as e:
        list(iter_frames(plan))
    one_line(e, "v.avi", "ends at frame 40", "plan it again")

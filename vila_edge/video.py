"""Video sampled at a frame rate (LLaMA-VID's `load_video`), decoded one frame at a time (OpenCV; no torch).

LLaMA-VID (`llamavid/serve/cli.py::load_video`, decord) takes every round(avg_fps / fps)-th frame from frame 0; an
hour of video at 1 fps is 3,600 frames, so frames stream through `iter_frames` and are never all held in memory.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .errors import MediaError, UsageError
from .media import _count_frames, bgr_to_image, open_video


@dataclass(frozen=True)
class VideoPlan:
    """Which frames of a video to read: indices into the file's frames and their times."""

    path: Path
    avg_fps: float  # the container's average frame rate
    total_frames: int  # frames in the file (counted where the container's count is wrong)
    indices: tuple[int, ...]  # increasing frame indices
    timestamps_s: tuple[float, ...]  # index / avg_fps
    duration_s: float  # total_frames / avg_fps

    def __post_init__(self):
        if any(b <= a for a, b in zip(self.indices, self.indices[1:])) or (self.indices and self.indices[0] < 0):
            raise ValueError(f"{self.path}: plan indices must increase from 0 or later, got {self.indices[:8]}...")

    def __len__(self) -> int:
        return len(self.indices)


def _probe(path: Path) -> tuple[float, int]:
    """(average fps, frame count) of a video file; the count checked by reading its last frame (and one past it),
    and counted frame by frame where the container's number is missing or wrong."""
    import cv2

    cap = open_video(path)
    try:
        fps, count = float(cap.get(cv2.CAP_PROP_FPS)), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        trusted = count > 0 and cap.set(cv2.CAP_PROP_POS_FRAMES, count - 1) and cap.grab() and not cap.grab()
    finally:
        cap.release()
    if not (math.isfinite(fps) and fps > 0):
        raise MediaError(f"{path}: the container gives no frame rate ({fps}); re-encode it (e.g. H.264 MP4)")
    if not trusted:
        count = _count_frames(path)
    if count == 0:
        raise MediaError(f"{path}: no decodable frames; check the file or re-encode it")
    return fps, count


def _first_at(t_s: float, avg_fps: float) -> int:
    """The smallest frame index i >= 0 with i / avg_fps >= t_s (exact in the float comparison)."""
    i = max(math.ceil(t_s * avg_fps), 0)
    while i > 0 and (i - 1) / avg_fps >= t_s:
        i -= 1
    while i / avg_fps < t_s:
        i += 1
    return i


def _check_options(path: Path, fps: float, max_frames: int | None, start: float | None, end: float | None) -> None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise UsageError(f"{path}: sampling fps {fps} must be a number > 0, e.g. 1 for one frame a second")
    if max_frames is not None and not (isinstance(max_frames, int) and max_frames >= 1):
        raise UsageError(f"{path}: max_frames {max_frames} must be a whole number, 1 or more (or None for no limit)")
    for name, t in (("start", start), ("end", end)):
        if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t)):
            raise UsageError(f"{path}: {name} {t} must be a time in seconds (or None for the video's {name})")
    if start is not None and end is not None and start >= end:
        raise UsageError(f"{path}: start {start} s is not before end {end} s; give start < end")


def sample_plan(path: str | Path, fps: float = 1.0, max_frames: int | None = None, start: float | None = None,
                end: float | None = None) -> VideoPlan:
    """The frames LLaMA-VID samples at `fps`: every round(avg_fps / fps)-th frame (at least every frame) of the
    frames whose time lies in [start, end) s, counted from the first of them; more than `max_frames` are thinned
    to `max_frames` spread evenly over the whole range (linspace over the list)."""
    path = Path(path)
    _check_options(path, fps, max_frames, start, end)
    if not path.is_file():
        raise MediaError(f"{path}: no such video file; check the path")
    avg_fps, total = _probe(path)
    first = _first_at(start, avg_fps) if start is not None else 0
    stop = min(_first_at(end, avg_fps), total) if end is not None else total
    if first >= stop:
        raise MediaError(f"{path}: no frame in [{start}, {end}) s; the video is {total / avg_fps:.3f} s long "
                         f"({total} frames at {avg_fps:g} fps)")
    step = max(round(avg_fps / fps), 1)  # Python's round, as upstream; fps above the video's own gives every frame
    indices = list(range(first, stop, step))
    if max_frames is not None and len(indices) > max_frames:
        indices = [indices[int(i)] for i in np.linspace(0, len(indices) - 1, max_frames)]
    return VideoPlan(path, avg_fps, total, tuple(indices), tuple(i / avg_fps for i in indices), total / avg_fps)


SEEK_AFTER_S = 30.0  # seek rather than grab through a gap longer than this: longer than most videos' keyframe gaps


def _seek(cap, index: int, avg_fps: float) -> bool:
    """Moves `cap` onto frame `index` (grabbed, ready to retrieve) by seeking; False where the frame it lands on is
    not the one asked for by its timestamp (an inexact seek), and then `cap` is of no further use."""
    import cv2

    if not (cap.set(cv2.CAP_PROP_POS_FRAMES, index) and cap.grab()):
        return False
    return abs(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000 * avg_fps - index) < 0.5


def iter_frames(plan: VideoPlan, skip: set[int] | frozenset[int] = frozenset(),
                seek_after_s: float | None = SEEK_AFTER_S) -> Iterator[tuple[int, Image.Image]]:
    """(position in plan.indices, RGB image) for each planned frame not in `skip`, in order, one frame held at a time:
    frames not wanted (skipped ones included) are only grabbed, never converted; a gap of more than `seek_after_s`
    seconds is sought over (CAP_PROP_POS_FRAMES, checked by the frame's timestamp, else read through from frame 0)."""
    wanted = [(pos, index) for pos, index in enumerate(plan.indices) if pos not in skip]
    if not wanted:
        return
    gap = seek_after_s * plan.avg_fps if seek_after_s is not None else None
    caps = [open_video(plan.path)]  # the one in use is last; `at`: the index of the frame its next grab() reads
    at = 0
    try:
        for pos, index in wanted:
            if gap is not None and index - at > gap:
                if _seek(caps[-1], index, plan.avg_fps):
                    at = index + 1
                else:  # never a wrong frame: start again from frame 0, and read through from now on
                    caps.append(open_video(plan.path))
                    at, gap = 0, None
            while at <= index:
                if not caps[-1].grab():
                    raise MediaError(f"{plan.path}: the video ends at frame {at}, before planned frame {index}; "
                                     "the file changed since it was planned or is damaged: plan it again")
                at += 1
            ok, frame = caps[-1].retrieve()
            if not ok:
                raise MediaError(f"{plan.path}: frame {index} does not decode; check the file or re-encode it")
            yield pos, bgr_to_image(frame)
    finally:
        for cap in caps:
            cap.release()

"""`caption ENGINE --source SRC`: captions over a stream of frames, one record per sampled frame.

Offline sources (a video file, a folder of images) are sampled deterministically: every Nth frame
(or F per second of the file's clock), in order, none dropped. Live sources (a camera, an RTSP
stream, or a file under --realtime) are read by their own thread, which keeps only the newest
sampled frame: what arrives while the model is busy replaces the frame waiting, and is counted as
dropped, so captions never lag behind the scene. A window of the K most recent sampled frames goes to
the model as one multi-image prompt.
"""

import math
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from .errors import MediaError, UsageError
from .media import bgr_to_image, image_files, load_image, open_video

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")
# Low latency over TCP (no UDP loss on Wi-Fi); a user's own OPENCV_FFMPEG_CAPTURE_OPTIONS wins.
RTSP_OPTIONS = "rtsp_transport;tcp|fflags;nobuffer|flags;low_delay|max_delay;500000"
OPEN_TIMEOUT_S, READ_TIMEOUT_S = 5.0, 5.0
# A connection that has decoded nothing yet waits this long for its first keyframe before it counts as lost: x264's
# default GOP is 250 frames, a keyframe every ~17 s at 15 fps, and a client that joins between two sees no frame.
FIRST_FRAME_S = 30.0
Tap = Callable[[object, int, float], None]  # (BGR frame, index, timestamp): every decoded frame, for --record


@dataclass
class Frame:
    index: int  # the frame's number in its source (a folder: the image's position in name order)
    timestamp: float  # seconds from the start of the source (live: of the capture)
    image: Image.Image


@dataclass(frozen=True)
class CaptureOptions:
    """How a --source is sampled, recorded and watched."""

    every: int = 1
    fps: float | None = None
    window: int = 1
    max_captions: int | None = None
    realtime: bool = False
    reconnect_timeout: float = 30.0
    record: str | None = None  # OUT.mp4
    alert: str | None = None  # a regular expression

    def given(self) -> list[str]:
        """The options set away from their defaults, as flags."""
        return [f"--{f.name.replace('_', '-')}" for f in fields(self) if getattr(self, f.name) != f.default]


class FrameSampler:
    """Which frames are captioned: every Nth, or at most F per second of the source's clock."""

    def __init__(self, every: int = 1, fps: float | None = None):
        if every < 1:
            raise UsageError(f"--every {every}: sample every 1st frame or more")
        if fps is not None and fps <= 0:
            raise UsageError(f"--fps {fps}: give a positive rate, e.g. --fps 0.5 for a caption every 2 s")
        self.every, self.fps, self.next_t = every, fps, 0.0

    def take(self, index: int, timestamp: float) -> bool:
        if self.fps is None:
            return index % self.every == 0
        if timestamp + 1e-6 < self.next_t:
            return False
        self.next_t = (math.floor(timestamp * self.fps + 1e-6) + 1) / self.fps  # the next 1/F slot
        return True


class VideoFile:
    """The sampled frames of a video file, decoded in order (frames nobody needs are grabbed, not converted)."""

    live = False

    def __init__(self, path: Path, sampler: FrameSampler):
        import cv2

        self.name, self.sampler, self.dropped, self.tap = str(path), sampler, 0, None
        self.cap = open_video(path)
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        index = 0
        while self.cap.grab():
            t = index / self.fps if self.fps > 0 else self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
            take = self.sampler.take(index, t)
            if take or self.tap:
                ok, bgr = self.cap.retrieve()
                if not ok:
                    raise MediaError(f"{self.name}: frame {index} cannot be decoded; re-encode the file")
                if take:
                    yield Frame(index, t, bgr_to_image(bgr))
                if self.tap:  # after the caption of this frame, which the recording then shows
                    self.tap(bgr, index, t)
            index += 1

    def close(self) -> None:
        self.cap.release()


class ImageFolder:
    """The sampled images of a folder, in name order; timestamps count one second per image."""

    live, fps = False, 1.0

    def __init__(self, path: Path, sampler: FrameSampler):
        self.name, self.sampler, self.dropped, self.tap = str(path), sampler, 0, None
        self.files = image_files(path)

    def __iter__(self) -> Iterator[Frame]:
        import numpy as np

        for index, file in enumerate(self.files):
            take = self.sampler.take(index, float(index))
            if take or self.tap:
                image = load_image(file)
                if take:
                    yield Frame(index, float(index), image)
                if self.tap:
                    self.tap(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]), index, float(index))

    def close(self) -> None:
        pass


class LiveSource:
    """A capture read by its own thread, keeping only the newest sampled frame.

    A sampled frame replaced by a newer one before the model takes it is dropped and counted. A network
    stream that stops is reopened with back-off (0.5 s doubling to 8 s) for up to `reconnect_s`; a
    camera that stops, or a file at its end, ends the stream.
    """

    live = True

    def __init__(self, name: str, connect: Callable, sampler: FrameSampler, *, pace: bool = False,
                 reconnect_s: float = 0.0, log: Callable[[str], None] | None = None):
        import cv2

        self.name, self.connect, self.sampler, self.pace, self.reconnect_s = name, connect, sampler, pace, reconnect_s
        self.log = log or (lambda message: None)
        self.cap = connect()  # fails here, before the model loads, if the source cannot be opened
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0
        if not 0 < self.fps <= 1000:
            self.fps = 30.0  # cameras and streams that report nothing (or 90000, the RTP clock)
        self.tap: Tap | None = None
        self.dropped = self.sampled = self.reconnects = 0
        self.reconnecting = False  # between losing a network stream and getting it back
        self.error: Exception | None = None
        self._pending: tuple | None = None
        self._finished = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"capture {name}", daemon=True)

    def __iter__(self) -> Iterator[Frame]:
        if not self._thread.is_alive() and not self._finished:
            self._thread.start()
        while True:
            with self._cond:
                while self._pending is None and not self._finished:
                    self._cond.wait(0.2)  # a timeout keeps Ctrl-C responsive
                if self._pending is None:
                    break
                (index, t, bgr), self._pending = self._pending, None
            yield Frame(index, t, bgr_to_image(bgr))
        if self.error:
            raise self.error

    def _read(self) -> None:
        index, start = 0, time.monotonic()
        connected, decoded = start, False  # since this connection: a stream joined between keyframes shows nothing
        try:
            while not self._stop.is_set():
                asked = time.monotonic()
                ok, bgr = self.cap.read()
                timed_out = time.monotonic() - asked >= 0.8 * READ_TIMEOUT_S  # data came, no frame (a closed one fails at once)
                if not ok and timed_out and self.reconnect_s and not decoded and time.monotonic() - connected < FIRST_FRAME_S:
                    self._waiting(connected)
                    continue  # the same connection: its next keyframe makes the first frame
                if not ok:
                    if self.reconnect_s and self._reconnect():
                        connected, decoded = time.monotonic(), False
                        continue
                    if not (self.pace or self.error or self._stop.is_set()):  # a file ends; a camera should not
                        self.error = MediaError(f"{self.name} stopped delivering frames (unplugged, or taken by "
                                                "another program?)")
                    break
                if self.pace:  # a file played at its own rate; its timestamps are the file's
                    t = index / self.fps
                    time.sleep(max(0.0, start + t - time.monotonic()))
                else:
                    t = time.monotonic() - start
                decoded = True
                if self.tap:
                    self.tap(bgr, index, t)
                if self.sampler.take(index, t):
                    with self._cond:
                        self.dropped += self._pending is not None
                        self.sampled += 1
                        self._pending = (index, t, bgr)
                        self._cond.notify()
                index += 1
        except Exception as e:  # surfaces in the consumer's thread, as the error of the stream
            self.error = e
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify()

    def _waiting(self, connected: float) -> None:
        self.log(f"{self.name}: no decodable frame after {time.monotonic() - connected:.0f} s; waiting for a keyframe "
                 f"(up to {FIRST_FRAME_S:g} s: streams with a long GOP send one every few seconds)")

    def _reconnect(self) -> bool:
        self.reconnecting = True
        try:
            return self._reopen()
        finally:
            self.reconnecting = False

    def _reopen(self) -> bool:
        self.cap.release()
        deadline, delay = time.monotonic() + self.reconnect_s, 0.5
        while not self._stop.is_set():
            self.log(f"{self.name}: stream lost; reconnecting in {delay:g} s")
            if self._stop.wait(min(delay, max(0.0, deadline - time.monotonic()))):
                return False
            try:
                self.cap = self.connect()
            except MediaError:
                if time.monotonic() >= deadline:
                    self.error = MediaError(f"{self.name}: the stream stopped and did not come back within "
                                            f"{self.reconnect_s:g} s (--reconnect-timeout)")
                    return False
                delay = min(2 * delay, 8.0)
                continue
            self.reconnects += 1
            self.log(f"{self.name}: reconnected")
            return True
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=OPEN_TIMEOUT_S + READ_TIMEOUT_S)
        self.cap.release()


def open_camera(spec: str):
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its own warnings; ours says what to do
    cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # V4L2 queues 4 frames by default: up to 4 frames of lag
    if not cap.isOpened():
        raise MediaError(f"camera {spec} cannot be opened: no such device, no permission, or another program "
                         "holds it (v4l2-ctl --list-devices lists cameras)")
    return cap


def open_pipeline(pipeline: str):
    """A GStreamer pipeline ending in appsink (a Jetson CSI camera: nvarguscamerasrc ! ... ! appsink)."""
    import cv2

    if not re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()):
        raise MediaError("this OpenCV is built without GStreamer (PyPI's opencv-python is); use JetPack's "
                         "python3-opencv for a GStreamer pipeline, or give a camera index or /dev/videoN")
    cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    if not cap.isOpened():
        raise MediaError(f"GStreamer pipeline cannot start: {pipeline}; try it with gst-launch-1.0 (ending in fakesink)")
    return cap


def open_stream(url: str):
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(OPEN_TIMEOUT_S * 1e3), cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(READ_TIMEOUT_S * 1e3)]
    # OpenCV reads the options from the environment at open; set them for this open only, since
    # nobuffer/low_delay on a file that is opened later cut it short (seen: an AVI ending at frame 79 of 120)
    user = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = user if user is not None else RTSP_OPTIONS
    try:
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, timeouts)
    finally:
        if user is None:
            del os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"]
    if not cap.isOpened():
        raise MediaError(f"{url}: cannot connect to the stream (unreachable, refused, or not found on the server "
                         f"within {OPEN_TIMEOUT_S:g} s); check the address with ffprobe {url}")
    return cap


def open_source(spec: str, every: int = 1, fps: float | None = None, realtime: bool = False,
                reconnect_s: float = 30.0, log: Callable[[str], None] | None = None):
    """A camera (index, /dev/videoN or a GStreamer pipeline), a network stream, a video file or an image folder."""
    sampler = FrameSampler(every, fps)
    if spec.isdigit() or spec.startswith("/dev/video"):
        return LiveSource(f"camera {spec}", lambda: open_camera(spec), sampler, log=log)
    if " ! " in spec:
        return LiveSource("GStreamer pipeline", lambda: open_pipeline(spec), sampler, log=log)
    if spec.startswith(STREAM_SCHEMES):
        return LiveSource(spec, lambda: open_stream(spec), sampler, reconnect_s=reconnect_s, log=log)
    path = Path(spec)
    if not path.exists():
        raise MediaError(f"{spec}: no such video file or folder; check the path")
    if path.is_dir():
        if realtime:
            raise UsageError("--realtime plays a video file at its frame rate; a folder has none")
        return ImageFolder(path, sampler)
    if realtime:
        return LiveSource(str(path), lambda: open_video(path), sampler, pace=True, log=log)
    return VideoFile(path, sampler)


def caption_frames(captioner, source, question: str, params, window: int = 1, max_captions: int | None = None,
                   alert: re.Pattern | None = None, recorder=None):
    """One record per sampled frame: the caption of it and the window - 1 sampled frames before it.
    The source is closed at the end, on an error, and when the consumer stops early (Ctrl-C)."""
    if window < 1:
        raise UsageError(f"--window {window}: at least 1 frame")
    recent: deque[Frame] = deque(maxlen=window)
    if window > 1:  # each frame through the tower once, not once per caption it stays in
        captioner.keep_encoded(window)
    try:
        for n, frame in enumerate(source, start=1):
            recent.append(frame)
            answer = captioner([f.image for f in recent], question, params)
            record = {
                "source": source.name,
                "frame_index": frame.index,
                "timestamp": round(frame.timestamp, 3),
                "frames": [f.index for f in recent],
                "text": answer.text,
                "token_ids": answer.token_ids,
                "ttft_s": round(answer.ttft_s, 4),
                "decode_tok_s": round(answer.decode_tok_s, 2),
                "dropped_frames": source.dropped,
            }
            if getattr(source, "reconnects", 0):
                record["reconnects"] = source.reconnects
            match = alert.search(answer.text) if alert else None
            if match:
                record["alert"] = match.group(0)
            if recorder:
                clip = recorder.caption(answer.text, alert=bool(match), frame_index=frame.index)
                if clip:
                    record["alert_clip"] = str(clip)
            yield record
            if max_captions and n >= max_captions:
                break
    finally:
        source.close()

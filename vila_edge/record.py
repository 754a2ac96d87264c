"""`caption --source SRC --record OUT.mp4`: every frame of the source with the latest caption drawn
over it, and with --alert a short clip around each alerting caption (OUT.alert-001.mp4, ...).

Files are written under a hidden partial name and renamed when complete, so a recording stopped by
Ctrl-C is still a playable video and a failed one leaves nothing half-written under OUT's name."""

import os
import threading
from collections import deque
from pathlib import Path

import numpy as np

from .errors import MediaError, UsageError

CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
FONT_SCALE, LINE_PX, MAX_LINES = 0.5, 18, 3


class VideoOut:
    """A video file opened at its first frame (which sets the size); later frames are fitted to it."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer, self.size = path, fps, None, None
        self.codec = CODECS[path.suffix.lower()]
        self.partial = path.with_name(f".{path.stem}.partial{path.suffix}")

    def write(self, bgr: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            self.size = (bgr.shape[1], bgr.shape[0])
            self.writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*self.codec), self.fps, self.size)
            if not self.writer.isOpened():
                raise MediaError(f"{self.path}: OpenCV cannot write this video (codec {self.codec})")
        if (bgr.shape[1], bgr.shape[0]) != self.size:
            bgr = cv2.resize(bgr, self.size)
        self.writer.write(bgr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.partial, self.path)
            self.writer = None


def wrap(text: str, width_px: int) -> list[str]:
    """The caption in lines that fit the frame's width, at most MAX_LINES (the last one cut with …)."""
    import cv2

    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, 1)[0][0] > width_px:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines += [line] if line else []
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES]
        lines[-1] = lines[-1][: max(0, len(lines[-1]) - 3)] + "..."
    return lines


def draw_caption(bgr: np.ndarray, text: str, alert: bool) -> np.ndarray:
    """A copy of the frame with the caption on a dark band at the bottom (red while alerting)."""
    import cv2

    out = bgr.copy()
    lines = wrap(text, out.shape[1] - 12)
    if not lines:
        return out
    top = max(0, out.shape[0] - LINE_PX * len(lines) - 8)
    band = out[top:]
    band[:] = (band * 0.35 + np.array((0, 0, 160) if alert else (0, 0, 0)) * 0.65).astype(np.uint8)
    for i, line in enumerate(lines):
        y = top + LINE_PX * (i + 1)
        cv2.putText(out, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class Recorder:
    """Frames come from the capture (any thread); captions from the loop. With alerts on, the last
    `pre_s` seconds are kept as JPEG so that a clip can start before the caption that raised it."""

    def __init__(self, path: str | Path, fps: float, alerts: bool = False, pre_s: float = 2.0, post_s: float = 3.0):
        self.path = Path(path)
        if self.path.suffix.lower() not in CODECS:
            raise UsageError(f"--record {path}: write a {' or '.join(CODECS)} file")
        if not self.path.parent.is_dir():
            raise UsageError(f"--record {path}: the folder {self.path.parent} does not exist")
        if self.path.exists() or any(self.path.parent.glob(f"{self.path.stem}.alert-*{self.path.suffix}")):
            raise UsageError(f"--record {path}: a recording of that name (or its alert clips) exists; "
                             "move it or choose another name")
        self.fps = fps
        self.main = VideoOut(self.path, fps)
        self.recent: deque[bytes] = deque(maxlen=max(1, round(pre_s * fps)) if alerts else 0)
        self.post_frames = max(1, round(post_s * fps))
        self.text, self.alerting, self.closed = "", False, False
        self.clip: VideoOut | None = None
        self.clip_left = self.clips = 0
        self.lock = threading.Lock()

    def write(self, bgr: np.ndarray, index: int = 0, timestamp: float = 0.0) -> None:
        import cv2

        with self.lock:
            if self.closed:
                return
            shown = draw_caption(bgr, self.text, self.alerting)
            self.main.write(shown)
            if self.recent.maxlen:
                self.recent.append(cv2.imencode(".jpg", shown)[1].tobytes())
            if self.clip:
                self.clip.write(shown)
                self.clip_left -= 1
                if self.clip_left <= 0:
                    self.clip.close()
                    self.clip = None

    def caption(self, text: str, alert: bool = False, frame_index: int | None = None) -> Path | None:
        """Show `text` from the next frame on; an alert starts a clip (or extends the one being written)."""
        import cv2

        with self.lock:
            self.text, self.alerting = text, alert
            if not alert or self.closed:
                return None
            if self.clip is None:
                self.clips += 1
                self.clip = VideoOut(self.path.with_name(f"{self.path.stem}.alert-{self.clips:03d}{self.path.suffix}"), self.fps)
                for jpeg in self.recent:  # the seconds before the caption that raised the alert
                    self.clip.write(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
            self.clip_left = self.post_frames
            return self.clip.path

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for out in (self.main, self.clip):
                if out:
                    out.close()

"""`caption ENGINE --source SRC`: captions over a stream of frames, one record per sampled frame.

Offline sources (a video file, a folder of images) are sampled deterministically: every Nth frame,
in order, none dropped. A window of the K most recent sampled frames goes to the model as one
multi-image prompt.
"""

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from .errors import MediaError, UnsupportedError, UsageError
from .media import bgr_to_image, load_image, open_video

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class Frame:
    index: int  # the frame's number in its source (a folder: the image's position in name order)
    timestamp: float  # seconds from the start of the source
    image: Image.Image


class VideoFile:
    """Every `every`-th frame of a video file, decoded in order (skipped frames are grabbed, not converted)."""

    def __init__(self, path: Path, every: int):
        import cv2

        self.name, self.every, self.dropped = str(path), every, 0
        self.cap = open_video(path)
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        index = 0
        try:
            while self.cap.grab():
                if index % self.every == 0:
                    ok, bgr = self.cap.retrieve()
                    if not ok:
                        raise MediaError(f"{self.name}: frame {index} cannot be decoded; re-encode the file")
                    t = index / self.fps if self.fps > 0 else self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
                    yield Frame(index, t, bgr_to_image(bgr))
                index += 1
        finally:
            self.cap.release()


class ImageFolder:
    """Every `every`-th image of a folder, in name order; timestamps count one second per image."""

    def __init__(self, path: Path, every: int):
        self.name, self.every, self.dropped = str(path), every, 0
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise MediaError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")

    def __iter__(self) -> Iterator[Frame]:
        for index in range(0, len(self.files), self.every):
            yield Frame(index, float(index), load_image(self.files[index]))


def open_source(spec: str, every: int = 1):
    """A video file or an image folder; camera indices, /dev/video* and rtsp:// are live sources."""
    if every < 1:
        raise UsageError(f"--every {every}: sample every 1st frame or more")
    if spec.isdigit() or spec.startswith(("/dev/video", "rtsp://", "rtsps://", "http://", "https://")):
        raise UnsupportedError(f"{spec}: live sources (cameras, RTSP) are not available yet in this version; "
                               "record a clip and pass the file, or a folder of frames")  # fmt: skip
    path = Path(spec)
    if not path.exists():
        raise MediaError(f"{spec}: no such video file or folder; check the path")
    return ImageFolder(path, every) if path.is_dir() else VideoFile(path, every)


def caption_frames(captioner, source, question: str, params, window: int = 1, max_captions: int | None = None):
    """One record per sampled frame: the caption of it and the window - 1 sampled frames before it."""
    if window < 1:
        raise UsageError(f"--window {window}: at least 1 frame")
    recent: deque[Frame] = deque(maxlen=window)
    for n, frame in enumerate(source, start=1):
        recent.append(frame)
        answer = captioner([f.image for f in recent], question, params)
        yield {
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
        if max_captions and n >= max_captions:
            break

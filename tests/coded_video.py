"""Small test videos whose frames say their own number: 8 black or white blocks (2 rows of 4, 16 x 8 px each) are
the bits of `first + i`, which survive MJPG and mp4v compression, so a decoded frame tells which frame it is."""

import cv2
import numpy as np

SIZE = 32  # px, square


def coded_frame(number: int) -> np.ndarray:
    """[SIZE, SIZE, 3] uint8: bit b of `number` is block (b // 4, b % 4), white for 1."""
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    for bit in range(8):
        if number >> bit & 1:
            row, col = divmod(bit, 4)
            frame[row * 16 : (row + 1) * 16, col * 8 : (col + 1) * 8] = 255
    return frame


def frame_number(pixels) -> int:
    """The number a decoded frame shows: an RGB image, or a [3, SIZE, SIZE] / [SIZE, SIZE, 3] array in [0, 1] or
    [0, 255]."""
    x = np.asarray(pixels, dtype=np.float32)
    if x.shape[0] == 3:
        x = x.transpose(1, 2, 0)
    x = x / (255.0 if x.max() > 1.5 else 1.0)
    bits = [x[r * 16 + 4 : r * 16 + 12, c * 8 + 2 : c * 8 + 6].mean() > 0.5 for r in range(2) for c in range(4)]
    return sum(int(b) << i for i, b in enumerate(bits))


def write_coded_video(path, n_frames: int, fps: float = 30, first: int = 0, fourcc: str | None = None):
    """n_frames frames at `fps`, frame i showing (first + i) % 256; MJPG in .avi, mp4v in .mp4."""
    fourcc = fourcc or ("mp4v" if str(path).endswith(".mp4") else "MJPG")
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (SIZE, SIZE))
    assert out.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for i in range(n_frames):
        out.write(coded_frame((first + i) % 256))
    out.release()
    return path


def decoded_numbers(path) -> list[int]:
    """Every frame's number, read with OpenCV front to back (the reference the tests compare against)."""
    cap, found = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        found.append(frame_number(frame))
    cap.release()
    return found

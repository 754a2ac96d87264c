"""Images and video frames in, normalised pixel arrays out (numpy; no torch)."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import MediaError, UnsupportedError
from .formats import IMAGE_SUFFIXES, is_image, is_video
from .tiling import VisionLayout


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such image file; check the path")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise MediaError(f"{path}: not a readable image ({e}); pass a JPEG, PNG, BMP or WebP file") from None


def _size(pre: dict) -> tuple[int, int]:
    """(width, height) the processor produces."""
    crop = pre.get("crop_size")
    if pre.get("do_center_crop") and crop:
        return (crop, crop) if isinstance(crop, int) else (crop["width"], crop["height"])
    size = pre["size"]
    if isinstance(size, int):
        return size, size
    if "shortest_edge" in size:
        return size["shortest_edge"], size["shortest_edge"]
    return size["width"], size["height"]


def _expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def _processor_resize(image: Image.Image, pre: dict) -> Image.Image:
    """The HF image processor's resize (+ centre crop for CLIP-style configs), with PIL."""
    resample = Image.Resampling(pre.get("resample", Image.Resampling.BICUBIC))
    size = pre["size"]
    if pre.get("do_resize", True):
        if isinstance(size, dict) and "shortest_edge" in size:
            s, (w, h) = size["shortest_edge"], image.size
            new_long = int(s * max(w, h) / min(w, h))
            target = (s, new_long) if w <= h else (new_long, s)
        else:
            target = (size, size) if isinstance(size, int) else (size["width"], size["height"])
        if image.size != target:
            image = image.resize(target, resample)
    if pre.get("do_center_crop") and pre.get("crop_size"):
        cw, ch = _size(pre)
        w, h = image.size
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
    return image


def preprocess(image: Image.Image, pre: dict, aspect_ratio: str = "resize") -> np.ndarray:
    """RGB image -> float32 [3, H, W], as VILA's process_image with the checkpoint's preprocessor_config."""
    mean = np.asarray(pre.get("image_mean", [0.5, 0.5, 0.5]), dtype=np.float32)
    std = np.asarray(pre.get("image_std", [0.5, 0.5, 0.5]), dtype=np.float32)
    image = image.convert("RGB")
    if aspect_ratio == "resize":
        image = image.resize(_size(pre), Image.Resampling.BICUBIC)  # PIL antialiased bicubic, as VILA1.5
    elif aspect_ratio == "pad":
        image = _expand_to_square(image, tuple(int(255 * m) for m in mean))
    elif aspect_ratio in ("dynamic", "dynamic_s2"):
        raise UnsupportedError(
            f"image_aspect_ratio {aspect_ratio!r} (NVILA multi-tile) is not supported yet; "
            "only 'resize' and 'pad' checkpoints run here"
        )
    image = _processor_resize(image, pre)
    x = np.asarray(image)
    if pre.get("do_rescale", True):
        # float64 then float32, as the HF processors do, so the pixels match bit for bit
        x = (x.astype(np.float64) * pre.get("rescale_factor", 1 / 255)).astype(np.float32)
    x = x.astype(np.float32)
    if pre.get("do_normalize", True):
        x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def layout_preprocess(image: Image.Image, pre: dict, aspect_ratio: str, layout: VisionLayout) -> np.ndarray:
    """preprocess for a checkpoint with this tiling layout: a tile, or a multi-image or video frame of a tiling
    checkpoint, takes the processor's own resize; S2 and NVILA's tower classes set the processor size themselves."""
    aspect = aspect_ratio if layout.mode in ("single", "s2") else "resize"
    size = layout.processor_size
    if size:
        pre = {**pre, "size": {"height": size, "width": size}, "crop_size": {"height": size, "width": size}}
    return preprocess(image, pre, aspect)


# ---- video -------------------------------------------------------------------------------------


def frame_indices(frame_count: int, n: int) -> list[int | None]:
    """VILA1.5's sampling: linspace(0, count - 2, n) truncated; a video shorter than n frames
    keeps all of them, left-padded with black frames (None)."""
    if frame_count >= n:
        return [int(i) for i in np.linspace(0, max(frame_count - 2, 0), n, dtype=int)]
    return [None] * (n - frame_count) + list(range(frame_count))


def open_video(path: Path):
    """An OpenCV capture of a video file; a MediaError where OpenCV cannot open it."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise MediaError(f"{path}: OpenCV cannot open this video; check the file or re-encode it (e.g. H.264 MP4)")
    return cap


def bgr_to_image(frame) -> Image.Image:
    """An OpenCV frame (BGR uint8) as an RGB PIL image."""
    import cv2

    return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def _count_frames(path: Path) -> int:
    cap, n = open_video(path), 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def _read_frames(path: Path, indices: list[int | None]) -> dict[int, Image.Image] | None:
    """Sequential read of the wanted frame indices (BGR -> RGB); None if the stream ends early."""
    want = {i for i in indices if i is not None}
    cap, frames, last = open_video(path), {}, max(want, default=-1)
    for i in range(last + 1):
        ok, frame = cap.read()
        if not ok:
            cap.release()
            return None
        if i in want:
            frames[i] = bgr_to_image(frame)
    cap.release()
    return frames


def load_video_frames(path: str | Path, n: int) -> list[Image.Image]:
    """n frames sampled uniformly from a video file."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such video file; check the path")
    if n < 1:
        raise MediaError(f"{path}: asked for {n} frames; pass --num-frames 1 or more")
    cap = open_video(path)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    frames = _read_frames(path, frame_indices(count, n)) if count > 0 else None
    if frames is None:  # the container's frame count was missing or wrong: count for real
        count = _count_frames(path)
        if count == 0:
            raise MediaError(f"{path}: no decodable frames; check the file or re-encode it")
        frames = _read_frames(path, frame_indices(count, n))
    size = next(iter(frames.values())).size
    return [frames[i] if i is not None else Image.new("RGB", size) for i in frame_indices(count, n)]


def image_files(folder: Path) -> list[Path]:
    """The images of a folder in name order; an error naming the folder where there are none."""
    files = sorted(f for f in folder.iterdir() if is_image(f))
    if not files:
        raise MediaError(f"{folder}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
    return files


def media_files(path: Path) -> list[Path]:
    """An image, a video, or a folder of images (sorted by name)."""
    if path.is_dir():
        return image_files(path)
    if not (is_image(path) or is_video(path)):
        raise MediaError(f"{path}: not an image or a video by its extension; pass an image, a video or a folder")
    return [path]


def media_images(path: Path, n: int) -> list[Image.Image]:
    """Up to n images: the files of a folder (or the one image), or n frames spread over a video."""
    files = media_files(path)
    if len(files) == 1 and is_video(files[0]):
        return load_video_frames(files[0], n)
    return [load_image(f) for f in files[:n]]

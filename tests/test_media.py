import cv2
import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from vila_edge.errors import MediaError, UnsupportedError
from vila_edge.media import frame_indices, load_image, load_video_frames, preprocess

SIGLIP = {"size": {"height": 70, "width": 70}, "resample": 3, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
          "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True}


def noise(w, h, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def test_resize_matches_pil_bicubic_then_siglip_processor():
    image = noise(123, 61)
    ours = preprocess(image, SIGLIP, "resize")
    ref = SiglipImageProcessorPil(**SIGLIP)(images=image.resize((70, 70), Image.Resampling.BICUBIC),
                                            return_tensors="np")["pixel_values"][0]
    assert ours.shape == (3, 70, 70) and ours.dtype == np.float32
    assert np.array_equal(ours, ref)


def test_pad_centres_on_the_mean_colour():
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    x = preprocess(image, SIGLIP, "pad")
    # mean 0.5 -> background int(255 * 0.5) = 127 -> (127/255 - 0.5) / 0.5
    bg = (127 / 255 - 0.5) / 0.5
    assert np.allclose(x[:, 0, 35], bg, atol=1e-6) and np.allclose(x[:, 35, 35], [1, -1, -1], atol=1e-6)


def test_clip_style_processor_resizes_short_edge_and_crops():
    cfg = {"size": {"shortest_edge": 56}, "crop_size": {"height": 56, "width": 56}, "do_center_crop": True,
           "resample": 3, "image_mean": [0.48145466, 0.4578275, 0.40821073],
           "image_std": [0.26862954, 0.26130258, 0.27577711]}
    image = noise(90, 60, seed=1)
    ours = preprocess(image, cfg, "none")
    ref = CLIPImageProcessorPil(**cfg)(images=image, return_tensors="np")["pixel_values"][0]
    assert ours.shape == ref.shape == (3, 56, 56)
    assert np.abs(ours - ref).max() < 1e-5


def test_dynamic_tiling_is_refused_clearly():
    with pytest.raises(UnsupportedError, match="dynamic_s2"):
        preprocess(noise(10, 10), SIGLIP, "dynamic_s2")


def test_frame_indices_follow_vila15():
    assert frame_indices(100, 8) == [int(i) for i in np.linspace(0, 98, 8, dtype=int)]
    assert frame_indices(100, 8) == [0, 14, 28, 42, 56, 70, 84, 98]
    assert frame_indices(3, 5) == [None, None, 0, 1, 2]  # short: left-padded with black frames


def write_video(path, n_frames, size=32):
    """Frame i is a flat grey of level 8 * i, so a frame's index can be read back from its pixels."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size, size))
    for i in range(n_frames):
        out.write(np.full((size, size, 3), 8 * i, np.uint8))
    out.release()
    return path


def frame_level(image):
    return int(round(np.asarray(image).mean() / 8))


def test_video_frames_are_the_sampled_ones(tmp_path):
    video = write_video(tmp_path / "v.avi", 30)
    frames = load_video_frames(video, 4)
    assert [frame_level(f) for f in frames] == frame_indices(30, 4) == [0, 9, 18, 28]
    short = load_video_frames(write_video(tmp_path / "s.avi", 2), 4)
    assert [frame_level(f) for f in short] == [0, 0, 0, 1] and np.asarray(short[0]).max() == 0


def test_bad_media_is_a_clear_error(tmp_path):
    with pytest.raises(MediaError, match="no such image file"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(MediaError, match="not a readable image"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(MediaError, match="no such video file"):
        load_video_frames(tmp_path / "missing.mp4", 4)
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(MediaError, match="broken.mp4"):
        load_video_frames(tmp_path / "broken.mp4", 4)

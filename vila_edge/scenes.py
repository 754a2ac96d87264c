"""Drawn scenes (sky, sun, hills, a house) for demos, benchmarks and stand-in calibration images.
numpy and Pillow only: the torch-free bench path draws its images here too."""

import numpy as np


def draw_scene(size: int = 480, seed: int | None = None):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    jitter = (lambda scale: rng.uniform(-scale, scale)) if seed is not None else (lambda scale: 0.0)
    tint = lambda rgb: tuple(int(np.clip(c + jitter(40), 0, 255)) for c in rgb)  # noqa: E731
    y = np.linspace(0, 1, size)[:, None, None]
    sky = (np.array(tint((90, 150, 230))) * (1 - y) + np.array(tint((200, 225, 250))) * y).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(sky, (size, size, 3)).copy())
    d = ImageDraw.Draw(image)
    sx, sy, hx, hy = jitter(0.5), jitter(0.05), jitter(0.2), jitter(0.1)
    box = lambda *f: tuple(v * size for v in f)  # noqa: E731
    d.ellipse(box(0.70 + sx, 0.08 + sy, 0.88 + sx, 0.26 + sy), fill=tint((255, 220, 60)))
    d.ellipse(box(-0.3, 0.55 + hy, 0.8, 1.4), fill=tint((70, 160, 70)))
    d.ellipse(box(0.4, 0.6 + hy, 1.4, 1.5), fill=tint((50, 130, 55)))
    d.rectangle(box(0.25 + hx, 0.45 + hy, 0.5 + hx, 0.68 + hy), fill=tint((190, 80, 60)))
    roof = [(0.22 + hx, 0.45 + hy), (0.375 + hx, 0.32 + hy), (0.53 + hx, 0.45 + hy)]
    d.polygon([(x * size, y * size) for x, y in roof], fill=tint((110, 60, 40)))
    return image


def generated_images(n: int, seed: int) -> list:
    """Drawn scenes of varied size with noise textures: a stand-in when no real frames are given."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        img = np.asarray(draw_scene(int(rng.integers(200, 520)), seed=seed + i), dtype=np.float32)
        img = img + rng.normal(0, rng.uniform(0, 25), img.shape)  # texture, so patches are not flat
        images.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    return images

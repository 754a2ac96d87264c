"""Multi-tile and multi-scale images, as VILA does them, in numpy and PIL (no torch): which tiles the tower sees,
and how its features become the projector's input.

- `s2` (VILA1.5-3B-S2; s2wrapper `forward`): the preprocessed image at the largest scale is resized (torch
  bicubic, no antialias) to every scale, each split into square tiles of the split size; per scale the tiles'
  feature maps are merged back (`merge_chessboard`), `area`-resized to one scale's map and concatenated on channels.
- `dynamic_s2` (NVILA; HEAD `mm_utils.dynamic_s2_preprocess`, `llava_arch.merge_features_for_dynamic_s2`,
  `encode_images`): one prompt image becomes the tiles of every scale but the last (square grids), then a grid of
  the closest aspect ratio at the last scale; the merged maps are area-resized to the last scale's and concatenated,
  cut back into tile-sized blocks for the projector, and the projected blocks merged and flattened row-major.
- `dynamic` (NVILA-Lite; HEAD `mm_utils.dynamic_preprocess`): the closest-aspect grid of tiles plus a thumbnail
  when there is more than one; every tile is its own `<image>` block.
Multi-image prompts and video frames are never tiled: each is resized to the first scale, and for `dynamic_s2`
its features are repeated once per scale along the channels (`merge_features_for_dynamic_s2`, no block size).
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from .errors import CheckpointError, UsageError

# ---- the grid of the closest aspect ratio ------------------------------------------------------------------------


def grid_candidates(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """(columns, rows) with min_tiles <= columns·rows <= max_tiles, in the order VILA tries them: by tile count,
    and within one count in the order of the set it sorts (CPython's, which is fixed for small int tuples)."""
    ratios = {(i, j) for n in range(min_tiles, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)
              if min_tiles <= i * j <= max_tiles}
    return sorted(ratios, key=lambda r: r[0] * r[1])


def closest_grid(width: int, height: int, candidates: list[tuple[int, int]], tile: int) -> tuple[int, int]:
    """find_closest_aspect_ratio: the (columns, rows) whose ratio is nearest the image's; on a tie the later one,
    when the image has more than half the pixels of that grid."""
    aspect, best, best_diff = width / height, (1, 1), float("inf")
    for cols, rows in candidates:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def grid_tiles(image: Image.Image, cols: int, rows: int, tile: int) -> list[Image.Image]:
    """The image resized (PIL's default bicubic) to cols × rows tiles, cut row by row."""
    resized = image.resize((tile * cols, tile * rows))
    return [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)]


def dynamic_tiles(image: Image.Image, min_tiles: int, max_tiles: int, tile: int) -> list[Image.Image]:
    """NVILA-Lite's tiles: the closest grid within min_tiles..max_tiles, then a whole-image thumbnail if more than one."""
    cols, rows = closest_grid(*image.size, grid_candidates(min_tiles, max_tiles), tile)
    tiles = grid_tiles(image, cols, rows, tile)
    return tiles + [image.resize((tile, tile))] if len(tiles) > 1 else tiles


def dynamic_s2_tiles(image: Image.Image, scales: list[int], max_tiles: int, tile: int) -> tuple[list[Image.Image], tuple[int, int]]:
    """NVILA's tiles and the last scale's (rows, columns): square grids for every scale but the last, then the
    closest grid with at least as many tiles as the last scale's square one."""
    tiles = []
    for scale in scales[:-1]:
        n = scale // scales[0]
        tiles += grid_tiles(image, n, n, tile)
    least = (scales[-1] // scales[0]) ** 2  # fewer allowed (max_tiles < least): no candidate, so one tile, as VILA
    cols, rows = closest_grid(*image.size, grid_candidates(least, max_tiles), tile)
    return tiles + grid_tiles(image, cols, rows, tile), (rows, cols)


# ---- feature maps ----------------------------------------------------------------------------------------------


def split_chessboard(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[B, C, H, W] -> [rows·cols·B, C, H/rows, W/cols], tiles row by row (s2wrapper / llava_arch split_chessboard)."""
    b, c, h, w = x.shape
    if h % rows or w % cols:
        raise ValueError(f"a {h}×{w} map does not split into {rows}×{cols}")
    th, tw = h // rows, w // cols
    return np.concatenate([x[:, :, r * th:(r + 1) * th, q * tw:(q + 1) * tw] for r in range(rows) for q in range(cols)])


def merge_chessboard(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """split_chessboard's inverse: [rows·cols·B, C, h, w] -> [B, C, rows·h, cols·w]."""
    b = len(x) // (rows * cols)
    return np.concatenate([np.concatenate([x[(r * cols + q) * b:(r * cols + q + 1) * b] for q in range(cols)], axis=-1)
                           for r in range(rows)], axis=-2)


def tokens_to_map(x: np.ndarray) -> np.ndarray:
    """[B, N, C] with N a square -> [B, C, √N, √N] (row-major tokens)."""
    b, n, c = x.shape
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"{n} tokens do not form a square map")
    return np.ascontiguousarray(x.reshape(b, side, side, c).transpose(0, 3, 1, 2))


def map_to_tokens(x: np.ndarray) -> np.ndarray:
    """[B, C, H, W] -> [B, H·W, C], row-major."""
    b, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(b, c, h * w).transpose(0, 2, 1))


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """torch's `area` interpolation (adaptive average pooling) along one axis: out[i] averages
    in[floor(i·n_in/n_out) : ceil((i+1)·n_in/n_out)]."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def area_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[B, C, H, W] -> [B, C, *size] as F.interpolate(mode="area"), in float32."""
    return _separable(x, _area_matrix(x.shape[2], size[0]), _area_matrix(x.shape[3], size[1]))


def _cubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """torch's bicubic (align_corners=False, no antialias) along one axis: source x = (i + 0.5)·n_in/n_out - 0.5,
    the 4 taps around it with Keys' a = -0.75, indices clamped at the borders."""
    def w(t):
        t = abs(t)
        return (a + 2) * t**3 - (a + 3) * t**2 + 1 if t <= 1 else a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = int(np.floor(src))
        t = src - base
        for k in range(-1, 3):
            m[i, min(max(base + k, 0), n_in - 1)] += w(k - t)
    return m


def bicubic_resize(x: np.ndarray, size: int) -> np.ndarray:
    """[B, C, S, S] -> [B, C, size, size] as F.interpolate(mode="bicubic") on float32."""
    return _separable(x, _cubic_matrix(x.shape[2], size), _cubic_matrix(x.shape[3], size))


def _separable(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """rows @ x @ colsᵀ on every [H, W] plane, in float64 (two matmuls, not a 4-index contraction)."""
    return (rows @ x.astype(np.float64) @ cols.T).astype(np.float32)


# ---- a prompt's images as tower tiles ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionLayout:
    """How a checkpoint turns images into tower tiles (from its top config; see Checkpoint.vision_layout)."""

    mode: str  # "single" (resize / pad), "s2", "dynamic" or "dynamic_s2"
    tile: int  # the tower's input size
    scales: tuple[int, ...] = ()  # s2 / dynamic_s2, ascending
    split: int = 0  # s2: tile size the scales are split into (s2_max_split_size)
    output_scale: int = 0  # index of the scale whose map size the merged features take
    min_tiles: int = 1
    max_tiles: int = 12

    def __post_init__(self):
        if self.mode in ("s2", "dynamic_s2"):
            bad = [s for s in self.scales if s % self.scales[0] or (self.mode == "s2" and s % self.split)]
            if len(self.scales) < 2 or bad:
                raise CheckpointError(f"s2_scales {','.join(map(str, self.scales))}: each scale must be a multiple of the "
                                      f"first{' and of s2_max_split_size ' + str(self.split) if self.mode == 's2' else ''}")
        if self.mode in ("dynamic", "dynamic_s2") and self.max_tiles < 1:
            raise UsageError(f"--max-tiles {self.max_tiles}: at least 1")

    def with_max_tiles(self, max_tiles: int | None) -> "VisionLayout":
        if max_tiles is None:
            return self
        if self.mode not in ("dynamic", "dynamic_s2"):
            raise UsageError(f"--max-tiles {max_tiles}: this checkpoint does not tile its images "
                             f"({'S2: fixed scales' if self.mode == 's2' else 'one resized image'}); drop the option")
        return VisionLayout(self.mode, self.tile, self.scales, self.split, self.output_scale,
                            min(self.min_tiles, max_tiles), max_tiles)

    @property
    def processor_size(self) -> int | None:
        """The size images are preprocessed to, where the tower class sets it (VILA's siglip_encoder): S2 the largest
        scale, dynamic_s2 the first (the tile); otherwise the preprocessor_config's."""
        return {"s2": self.scales[-1:], "dynamic_s2": self.scales[:1]}.get(self.mode, [None])[0]

    @property
    def channel_copies(self) -> int:
        """How many tower feature maps side by side the projector takes (the number of scales)."""
        return len(self.scales) if self.mode in ("s2", "dynamic_s2") else 1


def per_image(layout: VisionLayout, tokens_per_tile: int) -> dict:
    """A single image's cost under `layout`, from its fewest to its most tiles: tower passes and image tokens
    (multi-image prompts and video frames take one pass and tokens_per_tile each). s2 assumes the merged map takes
    the first scale's size, as VILA1.5-3B-S2 sets it."""
    if layout.mode == "s2":
        passes = sum((s // layout.split) ** 2 for s in layout.scales)
        return {"tower_passes": [passes, passes], "tokens": [tokens_per_tile, tokens_per_tile]}
    if layout.mode == "dynamic":
        most = layout.max_tiles + (layout.max_tiles > 1)  # the thumbnail
        return {"tower_passes": [1, most], "tokens": [tokens_per_tile, tokens_per_tile * most]}
    if layout.mode == "dynamic_s2" and layout.max_tiles > 1:
        fixed = sum((s // layout.scales[0]) ** 2 for s in layout.scales[:-1])
        least = (layout.scales[-1] // layout.scales[0]) ** 2
        grids = (least, layout.max_tiles) if layout.max_tiles >= least else (1, 1)
        return {"tower_passes": [fixed + grids[0], fixed + grids[1]],
                "tokens": [tokens_per_tile * grids[0], tokens_per_tile * grids[1]]}
    return {"tower_passes": [1, 1], "tokens": [tokens_per_tile, tokens_per_tile]}


def layout_from_config(config: dict, tower_size: int, s2_scales: list[int]) -> VisionLayout:
    """A checkpoint's layout from its top config (NVILA-8B says s2 false and dynamic_s2 true; VILA's defaults:
    s2_resize_output_to_scale_idx 0, min_tiles 1, max_tiles 12)."""
    aspect = config.get("image_aspect_ratio", "resize")
    if config.get("s2"):
        mode = "s2"
    elif config.get("dynamic_s2") or aspect == "dynamic_s2":
        mode = "dynamic_s2"
    else:
        mode = "dynamic" if aspect == "dynamic" else "single"
    return VisionLayout(mode, tile=tower_size, scales=tuple(sorted(s2_scales)),
                        split=int(config.get("s2_max_split_size") or tower_size),
                        output_scale=int(config.get("s2_resize_output_to_scale_idx") or 0),
                        min_tiles=int(config.get("min_tiles") or 1), max_tiles=int(config.get("max_tiles") or 12))


@dataclass
class ImageTiles:
    """One prompt image as the tower sees it: `pixels` [n, 3, t, t] and how their features make its blocks."""

    pixels: np.ndarray
    kind: str  # "single", "repeat" (one tile, features copied per scale), "s2", "tiles" (a block per tile), "dynamic_s2"
    grid: tuple[int, int] = (1, 1)  # dynamic_s2: the last scale's (rows, columns)

    @property
    def blocks(self) -> int:
        """The `<image>` places this image takes in the prompt."""
        return len(self.pixels) if self.kind == "tiles" else 1


def image_tiles(layout: VisionLayout, images: list[Image.Image], preprocess: Callable[[Image.Image], np.ndarray]) -> list[ImageTiles]:
    """Every prompt image as tower tiles; `preprocess(image)` is the checkpoint's processor (resize, normalise)."""
    stack = lambda ims: np.stack([preprocess(im) for im in ims])  # noqa: E731
    if layout.mode == "s2":
        return [s2_tiles(layout, stack([im])) for im in images]
    # --max-tiles 1 on NVILA: one tile, as with dynamic_s2 off (how TinyChat's NVILA table was measured)
    fast = layout.mode == "dynamic_s2" and layout.max_tiles == 1
    if layout.mode in ("dynamic", "dynamic_s2") and len(images) == 1 and not fast:
        image = images[0].convert("RGB")
        if layout.mode == "dynamic":
            return [ImageTiles(stack(dynamic_tiles(image, layout.min_tiles, layout.max_tiles, layout.tile)), "tiles")]
        tiles, grid = dynamic_s2_tiles(image, list(layout.scales), layout.max_tiles, layout.tile)
        return [ImageTiles(stack(tiles), "dynamic_s2", grid)]
    kind = "repeat" if layout.mode == "dynamic_s2" else "single"
    return [ImageTiles(stack([im]), kind) for im in images]


def s2_tiles(layout: VisionLayout, pixels: np.ndarray) -> ImageTiles:
    """VILA1.5-S2: the preprocessed [1, 3, S, S] image resized to each scale (torch bicubic) and split."""
    parts = [split_chessboard(bicubic_resize(pixels, s), -(-s // layout.split), -(-s // layout.split)) for s in layout.scales]
    return ImageTiles(np.concatenate(parts), "s2")


# ---- tower features -> image blocks ------------------------------------------------------------------------------


def merged_maps(layout: VisionLayout, image: ImageTiles, features: np.ndarray) -> np.ndarray:
    """The tower features [n, P, C] of one s2 / dynamic_s2 image -> the multi-scale map [1, C·scales, h, w]."""
    maps, start = [], 0
    grids = [(s // layout.split,) * 2 for s in layout.scales] if image.kind == "s2" else \
        [(s // layout.scales[0],) * 2 for s in layout.scales[:-1]] + [image.grid]
    for rows, cols in grids:
        maps.append(merge_chessboard(tokens_to_map(features[start:start + rows * cols]), rows, cols))
        start += rows * cols
    if start != len(features):
        raise ValueError(f"{len(features)} tile features for {start} tiles")
    size = maps[layout.output_scale].shape[-2:]
    return np.concatenate([area_resize(m, size) for m in maps], axis=1)


def projector_inputs(layout: VisionLayout, image: ImageTiles, features: np.ndarray) -> np.ndarray:
    """One image's tower features [n, P, C] -> what the projector takes for it, [m, P', C'] (m blocks)."""
    if image.kind in ("single", "tiles"):
        return features
    if image.kind == "repeat":
        return np.concatenate([features] * layout.channel_copies, axis=-1)
    merged = merged_maps(layout, image, features)
    if image.kind == "s2":
        return map_to_tokens(merged)
    return map_to_tokens(split_chessboard(merged, *_output_grid(layout, image)))


def _output_grid(layout: VisionLayout, image: ImageTiles) -> tuple[int, int]:
    """dynamic_s2: the (rows, columns) of blocks the merged map is cut into, the output scale's tile grid."""
    if layout.output_scale in (-1, len(layout.scales) - 1):
        return image.grid
    return (layout.scales[layout.output_scale] // layout.scales[0],) * 2


def image_blocks(layout: VisionLayout, image: ImageTiles, features: np.ndarray,
                 project: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """One image's tower features [n, P, C] -> its blocks of image tokens [T, H], through `project`
    ([m, P', C'] -> [m, T, H], the projector)."""
    projected = project(projector_inputs(layout, image, features))
    if image.kind != "dynamic_s2":
        return list(projected)
    rows, cols = _output_grid(layout, image)  # each block's tokens are row-major: stitch them into one map
    return [map_to_tokens(merge_chessboard(tokens_to_map(projected), rows, cols))[0]]


def encode_multiscale(layout: VisionLayout, images: list[ImageTiles], tower: Callable[[np.ndarray], np.ndarray],
                      project: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """Every image's blocks [T, H], in prompt order: `tower` (pixels [n, 3, t, t] -> features [n, P, C]) on its
    tiles, then image_blocks."""
    return [block for image in images for block in image_blocks(layout, image, tower(image.pixels), project)]

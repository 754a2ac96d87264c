"""An independent oracle of upstream VILA image processing: VILA1.5-3b-s2 (S2), NVILA (dynamic_s2), NVILA-Lite (dynamic).

Written from the upstream code, not from vila_edge (which it is meant to check). Each function names the upstream
file/function it follows. Upstream sources read (git snapshots):

- NVlabs/VILA HEAD ``b760c34`` (2025-11): ``llava/mm_utils.py`` (find_closest_aspect_ratio, dynamic_preprocess,
  dynamic_s2_preprocess, process_image, process_images), ``llava/model/llava_arch.py`` (merge_chessboard,
  split_chessboard, merge_features_for_dynamic_s2, encode_images, generate_content),
  ``llava/model/multimodal_encoder/{vision_encoder,siglip_encoder,builder}.py`` (VisionTowerS2, VisionTowerDynamicS2,
  SiglipVisionTower*), ``llava/model/multimodal_projector/base_projector.py``, ``llava/model/encoders/image/basic.py``,
  ``llava/model/configuration_llava.py``, ``llava/utils/media.py::extract_media``.
- NVlabs/VILA May 2024 release ``1c88211`` (the code VILA1.5-3b-s2 shipped with): ``vision_encoder.py::VisionTowerS2``,
  ``siglip_encoder.py::SiglipVisionTowerS2``, ``base_projector.py::DownSampleBlock`` (column-major), ``mm_utils.py``.
- bfshi/scaling_on_scales ``9c008a3`` (2025-02) ``s2wrapper/core.py::forward``, ``s2wrapper/utils.py``; and the
  loop-based ``utils.py`` of ``1629fa5`` (2024-04), which VILA1.5 was trained with: same semantics.
- Second/third readings: SGLang ``python/sglang/srt/models/{nvila,vila,nvila_lite}.py``; TensorRT-LLM
  ``tensorrt_llm/_torch/models/modeling_vila.py``, ``modeling_multimodal_utils.py`` and
  ``tests/unittest/_torch/modeling/test_modeling_vila.py`` (NVILA_8B_CONFIG, a copy of the published config).

Everything here runs in float32 on CPU. Upstream runs the tower and projector in fp16/bf16 (``.half()`` pixels), so an
implementation running in half precision should be compared with a tolerance, not bit for bit.

The subtle upstream details reproduced are marked ``UPSTREAM:`` in the comments.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IMAGE_TOKEN = "<image>"
# HEAD defaults (llava/model/configuration_llava.py::LlavaConfig, llava/train/args.py); PretrainedConfig's diff-based
# serialisation drops values equal to these, so published configs (NVILA-8B per TRT's NVILA_8B_CONFIG) lack them.
DEFAULT_MIN_TILES = 1
DEFAULT_MAX_TILES = 12
DEFAULT_VIDEO_MAX_TILES = 1
# SGLang nvila.py hardcodes these for the HF-format NVILA (it reads no scales from the config).
SGLANG_NVILA_SCALES = [448, 896, 1344]


# ----------------------------------------------------------------------------------------------------------------
# Tiling: llava/mm_utils.py (HEAD; taken from InternVL)
# ----------------------------------------------------------------------------------------------------------------

def target_ratios(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """The candidate grids (i = columns, j = rows) of dynamic_preprocess / dynamic_s2_preprocess, in upstream order.

    UPSTREAM: built as a Python *set* comprehension over n in [min_num, max_num], i, j in [1, n] with
    min_num <= i*j <= max_num, then ``sorted(..., key=i*j)``. The sort is stable, so grids of equal area keep the set's
    iteration order; that order is deterministic in CPython (int-tuple hashes are not randomised), and it is the same
    here because the set is built the same way. It only matters for exact ties between equal-area grids.
    Empty when max_num < min_num (e.g. dynamic_s2 with max_tiles < 9): then find_closest_aspect_ratio returns (1, 1).
    """
    ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(ratios, key=lambda r: r[0] * r[1])


def find_closest_aspect_ratio(aspect_ratio: float, target_ratios: Sequence[tuple[int, int]], width: int, height: int,
                              image_size: int) -> tuple[int, int]:
    """mm_utils.py::find_closest_aspect_ratio -> (columns, rows).

    UPSTREAM: the first grid with the strictly smallest |aspect - i/j| wins; on an *exact* float tie with the best so
    far, a later grid replaces it iff the image area > 0.5 * image_size**2 * i * j (i.e. the image is large enough to
    fill half of that grid). The best diff is not updated on a tie (it is equal anyway). Default (1, 1) if no grid.
    """
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in target_ratios:
        diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """PIL ``image.resize((w, h))`` with the default filter.

    UPSTREAM: mm_utils.py calls ``image.resize(...)`` with no resample argument: Pillow's default, BICUBIC (antialiased,
    a = -0.5) for RGB. Pillow returns a plain copy when the size is unchanged. Not torch bicubic.
    """
    return image.resize(size, Image.BICUBIC)


def _crop_grid(resized: Image.Image, cols: int, rows: int, image_size: int) -> list[Image.Image]:
    """UPSTREAM: tile i has box ((i % cols)*s, (i // cols)*s, ...): row-major, left to right then top to bottom."""
    return [resized.crop(((i % cols) * image_size, (i // cols) * image_size,
                          (i % cols + 1) * image_size, (i // cols + 1) * image_size)) for i in range(cols * rows)]


def dynamic_grid(width: int, height: int, min_num: int, max_num: int, image_size: int) -> tuple[int, int]:
    """The (columns, rows) grid dynamic_preprocess picks for a width x height image."""
    return find_closest_aspect_ratio(width / height, target_ratios(min_num, max_num), width, height, image_size)


def dynamic_preprocess(image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = 384,
                       use_thumbnail: bool = True) -> list[Image.Image]:
    """mm_utils.py::dynamic_preprocess (NVILA-Lite, image_aspect_ratio "dynamic") -> list of image_size^2 PIL tiles.

    Resize the whole image to (image_size*cols, image_size*rows), crop row-major tiles, then, UPSTREAM: only when there
    is more than one tile, *append* (last) a thumbnail = the original image resized to image_size^2.
    """
    cols, rows = dynamic_grid(*image.size, min_num, max_num, image_size)
    tiles = _crop_grid(_resize(image, (image_size * cols, image_size * rows)), cols, rows, image_size)
    if use_thumbnail and len(tiles) != 1:
        tiles.append(_resize(image, (image_size, image_size)))
    return tiles


def dynamic_s2_grid(width: int, height: int, s2_scales: Sequence[int], max_num: int,
                    image_size: int) -> tuple[int, int]:
    """The (columns, rows) grid of the last scale in dynamic_s2_preprocess.

    UPSTREAM: min_num = (scales[-1] // scales[0])**2 (9 for 448/896/1344): at least as many tiles as the largest
    square scale, at most max_num (config max_tiles, default 12)."""
    min_num = (s2_scales[-1] // s2_scales[0]) ** 2
    return find_closest_aspect_ratio(width / height, target_ratios(min_num, max_num), width, height, image_size)


def dynamic_s2_preprocess(image: Image.Image, s2_scales: Sequence[int] = (384, 768, 1152), max_num: int = 12,
                          image_size: int = 384) -> tuple[list[Image.Image], tuple[int, int]]:
    """mm_utils.py::dynamic_s2_preprocess (NVILA) -> (tiles, block_size = (rows, cols) of the last scale).

    Tiles in order: for every scale but the last, the image resized to a *square* image_size * (scale // scales[0])
    and cut into (scale // scales[0])^2 row-major tiles (1, then 2x2 for 448/896); then the last scale with a dynamic,
    aspect-preserving grid of min_num..max_num tiles. No thumbnail.
    UPSTREAM: the returned block_size is (target_aspect_ratio[1], target_aspect_ratio[0]) = (rows, cols).
    """
    tiles: list[Image.Image] = []
    for scale in s2_scales[:-1]:
        k = scale // s2_scales[0]
        tiles += _crop_grid(_resize(image, (image_size * k, image_size * k)), k, k, image_size)
    cols, rows = dynamic_s2_grid(*image.size, s2_scales, max_num, image_size)
    tiles += _crop_grid(_resize(image, (image_size * cols, image_size * rows)), cols, rows, image_size)
    return tiles, (rows, cols)


# ----------------------------------------------------------------------------------------------------------------
# Pixels: the SigLIP image processor (HF SiglipImageProcessor: resize, rescale 1/255, normalize), as VILA calls it
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Processor:
    """What VILA reads from vision_tower/preprocessor_config.json, with the size VILA's tower class overrides."""
    size: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resample: int = 3  # PIL filter id of the processor's own resize (3 = BICUBIC, SigLIP's)

    @classmethod
    def from_json(cls, path: Path, size: int | None = None) -> "Processor":
        cfg = json.loads(Path(path).read_text())
        s = cfg.get("size", {})
        height = s.get("height", s.get("shortest_edge")) if isinstance(s, dict) else s
        return cls(size=size or height, mean=tuple(cfg.get("image_mean", (0.5,) * 3)),
                   std=tuple(cfg.get("image_std", (0.5,) * 3)), rescale_factor=cfg.get("rescale_factor", 1 / 255),
                   resample=cfg.get("resample", 3))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """processor.preprocess(image)["pixel_values"][0]: PIL resize to size^2 with the config's resample (bicubic; a
        no-op copy for tiles that already have that size), x * (1/255) (float64, cast to float32, as transformers' rescale), (x - mean) / std. [3, s, s]"""
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling(self.resample))
        x = (np.asarray(image, dtype=np.float64) * self.rescale_factor).astype(np.float32)
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def stack(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self(im) for im in images])


# ----------------------------------------------------------------------------------------------------------------
# Chessboards: s2wrapper/utils.py (square) and llava_arch.py (rows x cols)
# ----------------------------------------------------------------------------------------------------------------

def split_chessboard_hw(x: torch.Tensor, num_split_h: int, num_split_w: int) -> torch.Tensor:
    """llava_arch.py::split_chessboard: [B, C, H, W] -> [nh*nw*B, C, H/nh, W/nw].

    UPSTREAM: sub-square (i, j) (row i, column j) goes to batch slot (i*nw + j)*B + b: row-major over the board,
    board-position major, batch minor."""
    b, c, height, width = x.shape
    assert height % num_split_h == 0 and width % num_split_w == 0, (x.shape, num_split_h, num_split_w)
    h, w = height // num_split_h, width // num_split_w
    x = x.reshape(b, c, num_split_h, h, num_split_w, w).permute(2, 4, 0, 1, 3, 5)
    return x.reshape(num_split_h * num_split_w * b, c, h, w)


def merge_chessboard_hw(x: torch.Tensor, num_split_h: int, num_split_w: int) -> torch.Tensor:
    """llava_arch.py::merge_chessboard, the inverse of split_chessboard_hw -> [B, C, nh*h, nw*w].

    UPSTREAM: also accepts [B, N, C] token maps, first viewed as square [B, C, sqrt(N), sqrt(N)] (row-major tokens)."""
    if x.dim() == 3:
        n = x.shape[1]
        side = math.isqrt(n)
        assert side * side == n, f"{n} tokens are not a square map"
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
    bb, c, h, w = x.shape
    assert bb % (num_split_h * num_split_w) == 0
    b = bb // (num_split_h * num_split_w)
    x = x.reshape(num_split_h, num_split_w, b, c, h, w).permute(2, 3, 0, 4, 1, 5)
    return x.reshape(b, c, num_split_h * h, num_split_w * w)


def split_chessboard(x: torch.Tensor, num_split: int) -> torch.Tensor:
    """s2wrapper/utils.py::split_chessboard (square board). Same order as the loop version of 2024-04 and the einops
    '(nh nw b)' version of 2024-12 (after the ad9c43d fix; 8d42817..ad9c43d had nh = H // num_split, a bug)."""
    return split_chessboard_hw(x, num_split, num_split)


def merge_chessboard(x: torch.Tensor, num_split: int) -> torch.Tensor:
    """s2wrapper/utils.py::merge_chessboard: [B*n^2, C, h, w] -> [B, C, n*h, n*w]."""
    assert x.dim() == 4
    return merge_chessboard_hw(x, num_split, num_split)


def _tokens_to_map(x: torch.Tensor) -> torch.Tensor:
    """'b (h w) c -> b c h w' with h = w = int(sqrt(N)) (s2wrapper / llava_arch)."""
    side = int(x.shape[1] ** 0.5)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """'b c h w -> b (h w) c'."""
    return x.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------------
# S2 (VILA1.5-3b-s2): s2wrapper/core.py::forward, called by VisionTowerS2.forward
# ----------------------------------------------------------------------------------------------------------------

TowerFn = Callable[[torch.Tensor], torch.Tensor]  # [B, 3, s, s] pixels -> [B, N, C] selected features


def s2_forward(tower_fn: TowerFn, pixels: torch.Tensor, scales: Sequence[int], max_split_size: int | None = None,
               resize_output_to_idx: int = 0, num_prefix_token: int = 0) -> torch.Tensor:
    """s2wrapper/core.py::forward with ``img_sizes=scales`` (output_shape 'bnc', split_forward False).

    pixels: [B, 3, S, S], already preprocessed at the largest scale (VILA: processor size = scales[-1], 768).
    Per scale: UPSTREAM torch ``F.interpolate(x.float(), size, mode='bicubic')`` (align_corners False, *no
    antialias*; identity at S itself) of the normalised tensor; split into ceil(size / max_split_size)^2 chessboard
    tiles; tower on the tiles; merge the tiles' token maps; UPSTREAM ``mode='area'`` resize of every scale's map to the
    map of scale ``resize_output_to_idx`` (0 for VILA1.5: 27x27); concatenate channels in scale order.
    Returns [B, h*w, C*len(scales)] (row-major tokens). VILA passes num_prefix_token 0 (SigLIP has no CLS).
    """
    assert pixels.dim() == 4 and pixels.shape[2] == pixels.shape[3], "s2wrapper takes square B x C x H x W input"
    b = pixels.shape[0]
    max_split_size = max_split_size or pixels.shape[2]
    num_splits = [math.ceil(size / max_split_size) for size in scales]
    outs, prefixes = [], []
    for size, n in zip(scales, num_splits):
        x = F.interpolate(pixels.to(torch.float32), size=size, mode="bicubic").to(pixels.dtype)
        out = tower_fn(split_chessboard(x, n))
        if num_prefix_token > 0:
            prefixes.append(out[:, :num_prefix_token])
            out = out[:, num_prefix_token:]
        outs.append(merge_chessboard(_tokens_to_map(out), n))
    side = outs[resize_output_to_idx].shape[-2]
    out = torch.cat([F.interpolate(o.to(torch.float32), size=side, mode="area").to(o.dtype) for o in outs], dim=1)
    out = _map_to_tokens(out)
    if num_prefix_token > 0:  # mean of each scale's prefix tokens over its splits, scales concatenated on channels
        pre = torch.cat([torch.stack(p.split(b, dim=0)).mean(0) for p in prefixes], dim=-1)
        out = torch.cat([pre, out], dim=1)
    return out


# ----------------------------------------------------------------------------------------------------------------
# dynamic_s2 (NVILA): llava_arch.py::merge_features_for_dynamic_s2 and encode_images
# ----------------------------------------------------------------------------------------------------------------

def merge_features_for_dynamic_s2(image_features: torch.Tensor, block_sizes: Sequence[tuple[int, int] | None],
                                  scales: Sequence[int], resize_output_to_scale_idx: int = -1,
                                  ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """llava_arch.py::merge_features_for_dynamic_s2.

    image_features: [n_tiles, N, C] tower features of all tiles of all images, in tile order. block_sizes: one entry
    per image: (rows, cols) from dynamic_s2_preprocess, or None for an untiled image (multi-image prompt, video frame).
    Returns (per image [1, C*len(scales), H, W] maps, new block sizes).

    - None: UPSTREAM the single [1, N, C] map is viewed as [1, C, h, w] and ``repeat(1, len(scales), 1, 1)``: the C
      channels are *tiled* len(scales) times ([c0..cC-1, c0..cC-1, ...]), not interleaved; block size (1, 1).
    - (rows, cols): every scale but the last has (scale // scales[0])^2 tiles merged as a square board; the last has
      rows x cols tiles merged as a rows x cols board; all maps are UPSTREAM ``mode='area'``-resized to the (H, W) of
      scale ``resize_output_to_scale_idx`` (-1: the last, possibly non-square, map; the square maps are stretched) and
      concatenated on channels in scale order. The new block size is (rows, cols) when that idx is -1 or the last,
      else (scales[idx] // scales[0],) * 2.
    """
    maps, new_sizes, cnt = [], [], 0
    for bs in block_sizes:
        if bs is None:
            m = _tokens_to_map(image_features[cnt:cnt + 1])
            maps.append(m.repeat(1, len(scales), 1, 1))
            new_sizes.append((1, 1))
            cnt += 1
            continue
        per_scale = []
        for scale in scales[:-1]:
            k = scale // scales[0]
            per_scale.append(merge_chessboard_hw(image_features[cnt:cnt + k * k], k, k))
            cnt += k * k
        per_scale.append(merge_chessboard_hw(image_features[cnt:cnt + bs[0] * bs[1]], bs[0], bs[1]))
        cnt += bs[0] * bs[1]
        size = per_scale[resize_output_to_scale_idx].shape[-2:]
        maps.append(torch.cat([F.interpolate(m.to(torch.float32), size=size, mode="area").to(m.dtype)
                               for m in per_scale], dim=1))
        if resize_output_to_scale_idx in (-1, len(scales) - 1):
            new_sizes.append(tuple(bs))
        else:
            k = scales[resize_output_to_scale_idx] // scales[0]
            new_sizes.append((k, k))
    assert cnt == len(image_features), f"{cnt} tiles consumed of {len(image_features)}"
    return maps, new_sizes


def project_dynamic_s2(maps: Sequence[torch.Tensor], block_sizes: Sequence[tuple[int, int]],
                       projector: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """The rest of llava_arch.py::encode_images (dynamic_s2): re-split each merged map into rows x cols blocks of the
    base tile's feature size (split_chessboard), flatten each block row-major, run the projector on all blocks as
    one batch (UPSTREAM: each block is downsampled separately, so an odd block side pads per block), merge the
    projected blocks back (merge_chessboard of the [B, T, H] token maps) and flatten row-major. -> per image [T, H]."""
    blocks = torch.cat([_map_to_tokens(split_chessboard_hw(m, *bs)) for m, bs in zip(maps, block_sizes)])
    projected = projector(blocks)
    out = []
    for part, bs in zip(projected.split([r * c for r, c in block_sizes]), block_sizes):
        out.append(_map_to_tokens(merge_chessboard_hw(part, *bs))[0])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Projector: llava/model/multimodal_projector/base_projector.py
# ----------------------------------------------------------------------------------------------------------------

def flat_square(x: torch.Tensor, k: int, order: str = "row") -> torch.Tensor:
    """The spatial-to-channel downsample of DownSampleBlock / flat_square_2x2 / flat_square_3x3.

    x: [n, R, C, c] (row-major token map). UPSTREAM padding: zero rows at the *bottom* and zero columns at the
    *right* up to a multiple of k (2x2: one row/col when odd; 3x3: ``3 - R % 3``, e.g. 32 -> 33, 5 -> 6). Each k x k
    group's features are concatenated with the row offset major, the column offset minor:
    [(r0,c0), (r0,c1), .., (r1,c0), ..]. Output [n, R/k, C/k, k*k*c] for order "row" (HEAD, NVILA, every *_fix
    block); for order "column" (May24 DownSampleBlock, which lacks HEAD's final permute) [n, C/k, R/k, k*k*c], so the
    flattened tokens run down the columns first.
    """
    n, rows, cols, c = x.shape
    pr, pc = (-rows) % k, (-cols) % k
    if pr or pc:
        x = F.pad(x, (0, 0, 0, pc, 0, pr))
        rows, cols = rows + pr, cols + pc
    x = x.reshape(n, rows // k, k, cols // k, k, c)
    x = x.permute(0, 1, 3, 2, 4, 5) if order == "row" else x.permute(0, 3, 1, 2, 4, 5)
    return x.reshape(n, x.shape[1], x.shape[2], k * k * c)


def downsample(x: torch.Tensor, k: int, order: str = "row") -> torch.Tensor:
    """DownSampleBlock.forward: [n, N, c] tokens viewed as int(sqrt(N))^2 row-major -> [n, tokens, k*k*c]."""
    side = int(x.shape[1] ** 0.5)
    y = flat_square(x.reshape(x.shape[0], side, side, x.shape[2]), k, order)
    return y.reshape(y.shape[0], -1, y.shape[-1])


def tokens_after(side: int, k: int) -> int:
    """Tokens a k x k downsample leaves of a side x side map (ceil, because of the zero padding)."""
    return math.ceil(side / k) ** 2


class _Downsample(nn.Module):
    def __init__(self, k: int, order: str):
        super().__init__()
        self.k, self.order = k, order

    def forward(self, x):
        return downsample(x, self.k, self.order)


class UpstreamProjector(nn.Module):
    """base_projector.py::MultimodalProjector: ``layers`` is an nn.Sequential whose indices are the weight keys of
    mm_projector/model.safetensors (``layers.N.*``). GELU is exact (erf), LayerNorm eps 1e-5 (nn defaults).

    - mlp_downsample: [down2x2, LN(4m), Linear(4m, H), GELU, Linear(H, H)]; the order of the downsample depends on the
      code version: "column" in the May24 release (VILA1.5, incl. 3b-s2), "row" in HEAD (NVILA uses this type).
    - mlp_downsample_2x2_fix: the same layers, always row-major.
    - mlp_downsample_3x3_fix: [down3x3, LN(9m), Linear(9m, 3m), GELU, LN(3m), Linear(3m, H), GELU, Linear(H, H)].
    - linear, mlp{N}x_gelu.
    """

    def __init__(self, projector_type: str, mm_hidden: int, hidden: int, order: str = "row"):
        super().__init__()
        m, h = mm_hidden, hidden
        self.projector_type = projector_type
        if projector_type in ("mlp_downsample", "mlp_downsample_2x2_fix"):
            self.k = 2
            down = _Downsample(2, order if projector_type == "mlp_downsample" else "row")
            self.layers = nn.Sequential(down, nn.LayerNorm(4 * m), nn.Linear(4 * m, h), nn.GELU(), nn.Linear(h, h))
        elif projector_type == "mlp_downsample_3x3_fix":
            self.k = 3
            self.layers = nn.Sequential(_Downsample(3, "row"), nn.LayerNorm(9 * m), nn.Linear(9 * m, 3 * m), nn.GELU(),
                                        nn.LayerNorm(3 * m), nn.Linear(3 * m, h), nn.GELU(), nn.Linear(h, h))
        elif projector_type == "linear":
            self.k = 1
            self.layers = nn.Linear(m, h)
        elif match := re.fullmatch(r"mlp(\d+)x_gelu", projector_type):
            self.k = 1
            mods: list[nn.Module] = [nn.Linear(m, h)]
            for _ in range(1, int(match.group(1))):
                mods += [nn.GELU(), nn.Linear(h, h)]
            self.layers = nn.Sequential(*mods)
        else:
            raise ValueError(f"unknown projector type {projector_type!r}")

    def forward(self, x):
        return self.layers(x)

    @classmethod
    def load(cls, folder: Path, mm_hidden: int, hidden: int, order: str = "row",
             state: dict | None = None) -> "UpstreamProjector":
        """From a VILA-layout mm_projector/ folder (config.json + model.safetensors), or from ``state`` (keys
        ``layers.N.*``) with the type taken from folder/config.json or given as folder=the type string."""
        from safetensors.torch import load_file

        folder = Path(folder)
        ptype = json.loads((folder / "config.json").read_text())["mm_projector_type"] if folder.is_dir() else str(folder)
        proj = cls(ptype, mm_hidden, hidden, order)
        state = state if state is not None else load_file(folder / "model.safetensors")
        proj.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return proj.eval()


# ----------------------------------------------------------------------------------------------------------------
# The tower: HF SiglipVisionModel, hidden_states[select_layer], feature select (vision_encoder.py::feature_select)
# ----------------------------------------------------------------------------------------------------------------

def siglip_tower_fn(model, select_layer: int = -2, select_feature: str = "cls_patch") -> TowerFn:
    """VisionTower.forward_feature: ``hidden_states[select_layer]`` (index 0 = embeddings; -2 = the output of the
    second-to-last layer, before post_layernorm); "patch" drops token 0, "cls_patch" keeps all (SigLIP has no CLS)."""

    @torch.no_grad()
    def fn(pixels: torch.Tensor) -> torch.Tensor:
        out = model(pixel_values=pixels.to(torch.float32), output_hidden_states=True)
        feats = out.hidden_states[select_layer]
        if select_feature == "patch":
            feats = feats[:, 1:]
        elif select_feature != "cls_patch":
            raise ValueError(f"unexpected select feature {select_feature!r}")
        return feats

    return fn


# ----------------------------------------------------------------------------------------------------------------
# The three pipelines on tensors (composable; shape tests pass fake towers/projectors)
# ----------------------------------------------------------------------------------------------------------------

def encode_s2(tower_fn: TowerFn, pixels: torch.Tensor, projector, scales: Sequence[int], max_split_size: int,
              resize_output_to_idx: int = 0) -> torch.Tensor:
    """VILA1.5 S2 (llava_arch.py May24 encode_images = projector(VisionTowerS2(images))): pixels [B, 3, S, S] at
    S = scales[-1] -> [B, T, H]."""
    return projector(s2_forward(tower_fn, pixels, scales, max_split_size, resize_output_to_idx))


def encode_dynamic_s2(tower_fn: TowerFn, tiles: torch.Tensor, block_sizes: Sequence[tuple[int, int] | None],
                      projector, scales: Sequence[int], resize_output_to_scale_idx: int = -1) -> list[torch.Tensor]:
    """HEAD llava_arch.py::encode_images with config.dynamic_s2: VisionTowerDynamicS2 is just the tower on all tiles
    (no s2wrapper, no resizing of pixels, s2_max_split_size unused); then merge_features_for_dynamic_s2 and
    project_dynamic_s2. -> one [T, H] per image (T = rows*cols*(tokens per base tile))."""
    feats = tower_fn(tiles)
    maps, sizes = merge_features_for_dynamic_s2(feats, block_sizes, scales, resize_output_to_scale_idx)
    return project_dynamic_s2(maps, sizes, projector)


def encode_plain(tower_fn: TowerFn, pixels: torch.Tensor, projector) -> torch.Tensor:
    """HEAD encode_images without dynamic_s2 (NVILA-Lite tiles, plain VILA): projector(tower(pixels)) -> [B, T, H]."""
    return projector(tower_fn(pixels))


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: the VILA layout (llm/ vision_tower/ mm_projector/) and the HF-format conversions (nvila, vila)
# ----------------------------------------------------------------------------------------------------------------

def _scales(value) -> list[int]:
    """UPSTREAM: s2_scales is a comma string in the config; VisionTowerS2/DynamicS2 parse and *sort* it."""
    if value is None:
        return []
    scales = list(map(int, value.split(","))) if isinstance(value, str) else [int(v) for v in value]
    return sorted(scales)


@dataclass
class UpstreamModel:
    """What the oracle needs of a checkpoint, resolved as upstream resolves it."""
    mode: str                       # "s2" | "dynamic_s2" | "dynamic" | "resize"
    tower: object                   # HF SiglipVisionModel (float32, eval)
    projector: UpstreamProjector
    processor: Processor            # size already overridden as the upstream tower class does
    select_layer: int = -2
    select_feature: str = "cls_patch"
    scales: list[int] = field(default_factory=list)
    max_split_size: int | None = None
    resize_output_to_scale_idx: int = 0
    min_tiles: int = DEFAULT_MIN_TILES
    max_tiles: int = DEFAULT_MAX_TILES
    video_max_tiles: int = DEFAULT_VIDEO_MAX_TILES
    order: str = "row"
    image_aspect_ratio: str = "resize"  # generate_content tiles a lone image only for "dynamic" / "dynamic_s2"
    family: str = "nvila"           # "vila1.5" (May24 semantics: no end tokens) | "nvila" (HEAD)
    config: dict = field(default_factory=dict)

    @property
    def processor_size(self) -> int:
        """The tile size for dynamic / dynamic_s2 (= scales[0]), the S2 input size (= scales[-1]) for s2."""
        return self.processor.size

    def tower_fn(self) -> TowerFn:
        return siglip_tower_fn(self.tower, self.select_layer, self.select_feature)


def _siglip_from_state(vision_config: dict, state: dict):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = {k: v for k, v in vision_config.items() if k not in ("architectures", "_name_or_path", "model_type")}
    model = SiglipVisionModel(SiglipVisionConfig(**cfg))
    # published tensors sit under vision_model. (transformers 4); transformers 5's SiglipVisionModel has no wrapper
    state = {k.removeprefix("vision_model."): v.float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "head" not in k]
    assert not missing and not [k for k in unexpected if "head" not in k], (missing, unexpected)
    return model.float().eval()


def load_upstream(ckpt: str | Path, order: str | None = None) -> UpstreamModel:
    """Read a VILA-layout checkpoint (top config.json + llm/ vision_tower/ mm_projector/) or an HF-format conversion
    (model_type "nvila", "vila", "nvila_lite": one model.safetensors with llm./vision_tower./mm_projector. prefixes).

    Mode, as upstream decides it: ``dynamic_s2: true`` -> dynamic_s2 (builder.py picks SiglipVisionTowerDynamicS2 on
    ``dynamic_s2``, not on ``s2``: NVILA-8B's config has ``s2: false``); else ``s2: true`` -> s2; else
    image_aspect_ratio "dynamic" -> dynamic; else resize.
    Processor size (UPSTREAM siglip_encoder.py): SiglipVisionTowerS2 sets it to scales[-1] (768),
    SiglipVisionTowerDynamicS2 to scales[0] (448; this is the tile size *and* the multi-image resize), the plain tower
    keeps preprocessor_config.json's. ``order`` overrides the mlp_downsample token order; default "column" for the
    s2 (VILA1.5, May24 release) family and "row" otherwise.
    """
    from transformers import SiglipVisionModel

    root = Path(ckpt)
    cfg = json.loads((root / "config.json").read_text())
    mtype = cfg.get("model_type")
    if mtype in ("nvila", "vila", "nvila_lite"):
        return _load_hf_format(root, cfg, order)

    hidden = cfg.get("hidden_size") or json.loads((root / "llm" / "config.json").read_text())["hidden_size"]
    vcfg = json.loads((root / "vision_tower" / "config.json").read_text())
    st = upstream_settings(cfg, vcfg["hidden_size"], order)
    tower = SiglipVisionModel.from_pretrained(root / "vision_tower", dtype=torch.float32).eval()
    proj = UpstreamProjector.load(root / "mm_projector", st["mm_hidden"], hidden, st["order"])
    processor = Processor.from_json(root / "vision_tower" / "preprocessor_config.json", st["processor_size"])
    return UpstreamModel(
        mode=st["mode"], tower=tower, projector=proj, processor=processor,
        select_layer=st["select_layer"], select_feature=st["select_feature"], scales=st["scales"],
        max_split_size=st["max_split_size"], resize_output_to_scale_idx=st["resize_output_to_scale_idx"],
        min_tiles=st["min_tiles"], max_tiles=st["max_tiles"], video_max_tiles=st["video_max_tiles"],
        order=st["order"], image_aspect_ratio=st["image_aspect_ratio"], family=st["family"], config=cfg)


def upstream_settings(cfg: dict, vision_hidden: int, order: str | None = None) -> dict:
    """How upstream reads a VILA-layout top config.json (pure; see load_upstream). Keys: mode, scales, mm_hidden,
    processor_size (None: keep preprocessor_config.json's), max_split_size, resize_output_to_scale_idx, min_tiles,
    max_tiles, video_max_tiles, select_layer, select_feature, order, family."""
    scales = _scales(cfg.get("s2_scales"))
    dynamic_s2 = bool(cfg.get("dynamic_s2", False))
    s2 = bool(cfg.get("s2", False)) and not dynamic_s2
    ratio = cfg.get("image_aspect_ratio", "resize")
    mode = "dynamic_s2" if dynamic_s2 else "s2" if s2 else "dynamic" if ratio == "dynamic" else "resize"
    llm = json.dumps(cfg.get("llm_cfg", {}))
    family = "vila1.5" if mode in ("s2", "resize") and "qwen2" not in llm else "nvila"
    return {
        "mode": mode, "scales": scales,
        # builder.py: mm_hidden_size = tower hidden * len(scales) for (dynamic_)s2, else the tower hidden
        "mm_hidden": vision_hidden * (len(scales) if mode in ("s2", "dynamic_s2") else 1),
        "processor_size": scales[-1] if mode == "s2" else scales[0] if mode == "dynamic_s2" else None,
        "max_split_size": cfg.get("s2_max_split_size"),
        # UPSTREAM: getattr(config, "s2_resize_output_to_scale_idx", 0) (LlavaConfig default 0); NVILA writes -1
        "resize_output_to_scale_idx": cfg.get("s2_resize_output_to_scale_idx", 0),
        "min_tiles": cfg.get("min_tiles") or DEFAULT_MIN_TILES,
        "max_tiles": cfg.get("max_tiles") or DEFAULT_MAX_TILES,
        "video_max_tiles": cfg.get("video_max_tiles") or DEFAULT_VIDEO_MAX_TILES,
        # VisionTower.__init__: getattr(args, "mm_vision_select_layer", -2), (..., "mm_vision_select_feature", "patch")
        "select_layer": cfg.get("mm_vision_select_layer", -2),
        "select_feature": cfg.get("mm_vision_select_feature", "patch"),
        "order": order or ("column" if family == "vila1.5" else "row"),
        "image_aspect_ratio": ratio,
        "family": family,
    }


def _load_hf_format(root: Path, cfg: dict, order: str | None) -> UpstreamModel:
    """HF-format NVILA (SGLang nvila.py: dynamic_s2, select -2, cls_patch, resize idx -1, scales hardcoded
    448/896/1344, mlp_downsample row-major) and NVILA-Lite (SGLang vila.py / nvila_lite.py: 3x3_fix, tower then
    projector per tile; the tiling is in the checkpoint's remote processor, read here as HEAD's dynamic_preprocess with
    min 1 / max 12). Fields the SGLang classes do not read (s2_scales, max_tiles, ...) are used when present: the tiny
    conversions carry them (tiny scales), the real NVILA-8B-hf may not (then SGLang's hardcoded values apply)."""
    from safetensors.torch import load_file

    state = {}
    for f in sorted(root.glob("*.safetensors")):
        state.update(load_file(f))
    tower = _siglip_from_state(cfg["vision_config"], {k[len("vision_tower."):]: v for k, v in state.items()
                                                      if k.startswith("vision_tower.")})
    proj_state = {k[len("mm_projector."):]: v for k, v in state.items() if k.startswith("mm_projector.")}
    vhidden = cfg["vision_config"]["hidden_size"]
    hidden = cfg["text_config"]["hidden_size"]
    pre = root / "preprocessor_config.json"
    if cfg["model_type"] == "nvila":
        scales = _scales(cfg.get("s2_scales")) or list(SGLANG_NVILA_SCALES)
        ptype = cfg.get("mm_projector_type", "mlp_downsample")
        proj = UpstreamProjector.load(Path(ptype), vhidden * len(scales), hidden, order or "row", proj_state)
        return UpstreamModel(mode="dynamic_s2", tower=tower, projector=proj,
                             processor=Processor.from_json(pre, scales[0]) if pre.exists() else Processor(scales[0]),
                             select_layer=-2, select_feature="cls_patch", scales=scales,
                             resize_output_to_scale_idx=cfg.get("s2_resize_output_to_scale_idx", -1),
                             max_tiles=cfg.get("max_tiles") or DEFAULT_MAX_TILES, family="nvila",
                             image_aspect_ratio=cfg.get("image_aspect_ratio", "dynamic_s2"), config=cfg)
    ptype = cfg.get("mm_projector_type", "mlp_downsample_3x3_fix")
    proj = UpstreamProjector.load(Path(ptype), cfg.get("mm_hidden_size", vhidden), hidden, "row", proj_state)
    size = cfg["vision_config"].get("image_size", 448)
    return UpstreamModel(mode="dynamic", tower=tower, projector=proj,
                         processor=Processor.from_json(pre) if pre.exists() else Processor(size),
                         select_layer=cfg.get("mm_vision_select_layer", -2),
                         select_feature=cfg.get("mm_vision_select_feature", "cls_patch"),
                         min_tiles=cfg.get("min_tiles") or DEFAULT_MIN_TILES,
                         max_tiles=cfg.get("max_tiles") or DEFAULT_MAX_TILES, family="nvila",
                         image_aspect_ratio=cfg.get("image_aspect_ratio", "dynamic"), config=cfg)


# ----------------------------------------------------------------------------------------------------------------
# Images -> per-<image> token blocks
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class UpstreamEncoding:
    """The result of encode_image(s)_upstream.

    blocks: one [T, H] float32 tensor per "<image>" token the prompt holds, in prompt order, *without* the end token.
    image_text: what replaces each user "<image>" in the prompt text, per input image (HEAD generate_content):
        dynamic single image -> "<image>\\n" * n_tiles (so each tile is followed by the encoder's "\\n" *and* a text
        "\\n"); every other case -> "<image>". (VILA1.5 May24 puts "<image>\\n" before the question itself; the "\\n"
        there is plain prompt text.)
    end_text: "\\n" for HEAD/NVILA: BasicImageEncoder appends embed(tokenizer("\\n")) after *every* block; None for
        VILA1.5 (May24 splices the bare [T, H] block).
    tiles: the PIL tiles/resized images fed to the processor, in tower order. pixels: [n, 3, s, s] processor output.
    block_sizes: per input image, (rows, cols) of the dynamic_s2 last scale, else None.
    tower_passes: SigLIP forward passes at the tower resolution (batch rows).
    """
    blocks: list[torch.Tensor]
    image_text: list[str]
    end_text: str | None
    tiles: list[Image.Image]
    pixels: torch.Tensor
    block_sizes: list[tuple[int, int] | None]
    tower_passes: int
    mode: str


def _as_model(ckpt_or_model) -> UpstreamModel:
    return ckpt_or_model if isinstance(ckpt_or_model, UpstreamModel) else load_upstream(ckpt_or_model)


@torch.no_grad()
def encode_images_upstream(ckpt_or_model, images: Sequence[Image.Image], max_tiles: int | None = None
                           ) -> UpstreamEncoding:
    """The full upstream path for the images of one prompt (HEAD ``generate_content`` + ``encode_images``; May24
    ``process_images`` + ``encode_images`` for VILA1.5-3b-s2).

    UPSTREAM (HEAD generate_content): tiling happens only when the prompt holds exactly *one* image
    (``len(media["image"]) == 1``); video frames are extracted as images too (extract_media), so a video or several
    images take ``process_images``: for dynamic/dynamic_s2 that is the processor's own resize to its size (scales[0]
    for dynamic_s2 = 448), one tile each; dynamic_s2 then repeats its channels x len(scales) (block size None).
    (TRT-LLM's VILA tiles every image of a multi-image prompt; this oracle follows VILA.)

    max_tiles: for "dynamic", the ``max_tiles`` argument of process_image (overrides config max_tiles). For
    "dynamic_s2", UPSTREAM process_image *ignores* its max_tiles argument and reads config.max_tiles; here a given
    value stands for config.max_tiles. max_tiles < (scales[-1]//scales[0])^2 leaves no candidate grid, so the last
    scale is a single (1, 1) tile (1 + 4 + 1 tiles, one block's tokens).
    """
    m = _as_model(ckpt_or_model)
    images = [im.convert("RGB") for im in images]  # process_image: image.convert("RGB")
    tower, proj, size = m.tower_fn(), m.projector, m.processor_size
    # HEAD generate_content: tile only a lone image, and only when image_aspect_ratio is dynamic / dynamic_s2
    single = len(images) == 1 and m.image_aspect_ratio in ("dynamic", "dynamic_s2")
    if m.mode == "dynamic_s2" and single and m.image_aspect_ratio != "dynamic_s2":
        raise NotImplementedError("dynamic_s2 tower with image_aspect_ratio 'dynamic' (dynamic_preprocess tiles fed "
                                  "to the dynamic_s2 merge) is not a published combination")
    if m.mode == "s2":
        pixels = m.processor.stack([_resize(im, (size, size)) for im in images])  # "resize": PIL resize to 768
        out = encode_s2(tower, pixels, proj, m.scales, m.max_split_size, m.resize_output_to_scale_idx)
        k = [math.ceil(s / (m.max_split_size or size)) ** 2 for s in m.scales]
        return UpstreamEncoding(list(out), [IMAGE_TOKEN] * len(images), None, images, pixels, [None] * len(images),
                                sum(k) * len(images), m.mode)
    if m.mode == "dynamic_s2":
        if single:
            tiles, bs = dynamic_s2_preprocess(images[0], m.scales, max_tiles or m.max_tiles, size)
            block_sizes = [bs]
        else:
            tiles, block_sizes = images, [None] * len(images)
        pixels = m.processor.stack(tiles)
        blocks = encode_dynamic_s2(tower, pixels, block_sizes, proj, m.scales, m.resize_output_to_scale_idx)
        return UpstreamEncoding(blocks, [IMAGE_TOKEN] * len(images), "\n", tiles, pixels, block_sizes,
                                len(tiles), m.mode)
    if m.mode == "dynamic" and single:
        tiles = dynamic_preprocess(images[0], m.min_tiles, max_tiles or m.max_tiles, size)
        pixels = m.processor.stack(tiles)
        blocks = list(encode_plain(tower, pixels, proj))
        return UpstreamEncoding(blocks, [(IMAGE_TOKEN + "\n") * len(tiles)], "\n", tiles, pixels, [None],
                                len(tiles), m.mode)
    # multi-image dynamic, or plain resize
    pixels = m.processor.stack(images)
    blocks = list(encode_plain(tower, pixels, proj))
    return UpstreamEncoding(blocks, [IMAGE_TOKEN] * len(images), None if m.family == "vila1.5" else "\n", images,
                            pixels, [None] * len(images), len(images), m.mode)


def encode_image_upstream(ckpt_or_model, image: Image.Image, max_tiles: int | None = None) -> UpstreamEncoding:
    """One image alone in its prompt (the tiled path for dynamic / dynamic_s2). See encode_images_upstream."""
    return encode_images_upstream(ckpt_or_model, [image], max_tiles)


def expected_tokens(mode: str, width: int, height: int, *, tile: int, patch: int, k: int,
                    scales: Sequence[int] = (), max_tiles: int = DEFAULT_MAX_TILES, min_tiles: int = DEFAULT_MIN_TILES,
                    single: bool = True) -> list[int]:
    """Token counts per "<image>" block, by arithmetic only (no tower): for hand checks and sizing."""
    g = tile // patch
    per_tile = tokens_after(g, k)
    if mode == "dynamic_s2" and single:
        cols, rows = dynamic_s2_grid(width, height, scales, max_tiles, tile)
        return [rows * cols * per_tile]
    if mode == "dynamic" and single:
        cols, rows = dynamic_grid(width, height, min_tiles, max_tiles, tile)
        return [per_tile] * (cols * rows + (cols * rows > 1))
    return [per_tile]

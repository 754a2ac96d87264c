"""tiling.py's numpy resizes and chessboards against the torch calls VILA makes (F.interpolate bicubic and area),
and its grids and tile counts against the published shapes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vila_edge.tiling import (
    VisionLayout,
    area_resize,
    bicubic_resize,
    closest_grid,
    dynamic_s2_tiles,
    dynamic_tiles,
    grid_candidates,
    image_blocks,
    image_tiles,
    merge_chessboard,
    split_chessboard,
)


@pytest.mark.parametrize("size_in,size_out", [(140, 70), (70, 140), (768, 384), (5, 7), (9, 4)])
def test_bicubic_resize_is_torchs_without_antialias(size_in, size_out):
    x = np.random.default_rng(size_in).uniform(-1, 1, (2, 3, size_in, size_in)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x), size=size_out, mode="bicubic").numpy()
    np.testing.assert_allclose(bicubic_resize(x, size_out), want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("shape_in,shape_out", [((10, 10), (5, 5)), ((32, 32), (96, 128)), ((64, 64), (96, 128)),
                                                ((7, 9), (3, 4)), ((96, 128), (96, 128))])
def test_area_resize_is_torchs(shape_in, shape_out):
    x = np.random.default_rng(0).standard_normal((1, 4, *shape_in)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x), size=shape_out, mode="area").numpy()
    np.testing.assert_allclose(area_resize(x, shape_out), want, rtol=0, atol=1e-5)


def test_chessboards_split_row_by_row_and_merge_back():
    x = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)
    tiles = split_chessboard(x, 2, 3)
    assert tiles.shape == (12, 3, 2, 2)
    np.testing.assert_array_equal(tiles[1 * 2 + 0], x[0, :, 0:2, 2:4])  # tile (row 0, column 1) of image 0
    np.testing.assert_array_equal(tiles[3 * 2 + 1], x[1, :, 2:4, 0:2])  # tile (row 1, column 0) of image 1
    np.testing.assert_array_equal(merge_chessboard(tiles, 2, 3), x)


def test_grids_follow_the_image_aspect_within_the_tile_budget():
    assert closest_grid(1344, 896, grid_candidates(1, 12), 448) == (3, 2)
    assert closest_grid(896, 1344, grid_candidates(1, 12), 448) == (2, 3)
    assert closest_grid(448, 448, grid_candidates(1, 12), 448) == (1, 1)  # a square: the 1×1 grid is the first match
    assert closest_grid(4000, 4000, grid_candidates(1, 12), 448) == (3, 3)  # large: a tie goes to the bigger grid
    assert closest_grid(1344, 896, grid_candidates(9, 12), 448) == (4, 3)  # NVILA's last scale: 9..12 tiles
    assert grid_candidates(9, 4) == []


def test_tile_counts_of_the_published_layouts():
    image = Image.new("RGB", (1344, 896), (90, 120, 200))
    assert len(dynamic_tiles(image, 1, 12, 448)) == 6 + 1  # 3 × 2 tiles and the thumbnail
    assert len(dynamic_tiles(image, 1, 1, 448)) == 1  # no thumbnail for a single tile
    tiles, grid = dynamic_s2_tiles(image, [448, 896, 1344], 12, 448)
    assert grid == (3, 4) and len(tiles) == 1 + 4 + 12 and {t.size for t in tiles} == {(448, 448)}
    tiles, grid = dynamic_s2_tiles(image, [448, 896, 1344], 4, 448)  # fewer allowed than 9: one tile, as VILA
    assert grid == (1, 1) and len(tiles) == 1 + 4 + 1


def test_multiscale_blocks_have_the_published_token_counts():
    """VILA1.5-3B-S2: 5 passes -> 27×27 × 2304 channels -> 196 tokens; NVILA-8B: rows·cols·256 tokens. The tower and
    projector are shape stand-ins: this is about the merge's shapes and order, not the numbers."""
    def tower(pixels):
        side = pixels.shape[-1] // 14
        return np.ones((len(pixels), side * side, 1152), np.float32) * pixels.mean(axis=(1, 2, 3))[:, None, None]

    def downsample_2x2(x):  # [m, P, C] -> [m, ceil(√P/2)², 8]: the token count of a 2×2 projector
        side = -(-int(round(len(x[0]) ** 0.5)) // 2)
        return np.zeros((len(x), side * side, 8), np.float32)

    s2 = VisionLayout("s2", tile=384, scales=(384, 768), split=384)
    image = image_tiles(s2, [Image.new("RGB", (640, 480))], lambda im: np.zeros((3, 768, 768), np.float32))[0]
    assert image.pixels.shape == (5, 3, 384, 384)
    features = tower(image.pixels)
    (block,) = image_blocks(s2, image, features, lambda x: x)
    assert block.shape == (729, 2304)
    nvila = VisionLayout("dynamic_s2", tile=448, scales=(448, 896, 1344), output_scale=-1)
    image = image_tiles(nvila, [Image.new("RGB", (1344, 896))], lambda im: np.zeros((3, 448, 448), np.float32))[0]
    assert image.grid == (3, 4) and len(image.pixels) == 17
    (block,) = image_blocks(nvila, image, np.zeros((17, 1024, 1152), np.float32), downsample_2x2)
    assert block.shape == (12 * 256, 8)
    one = nvila.with_max_tiles(1)
    images = image_tiles(one, [Image.new("RGB", (1344, 896))], lambda im: np.zeros((3, 448, 448), np.float32))
    assert images[0].kind == "repeat" and len(images[0].pixels) == 1
    seen = []
    image_blocks(one, images[0], np.zeros((1, 1024, 1152), np.float32), lambda x: seen.append(x.shape) or x)
    assert seen == [(1, 1024, 3456)]  # the tile's features once per scale

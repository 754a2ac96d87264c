"""Checks of the upstream oracle itself (tests/upstream_vila.py) against hand-checkable facts and the real configs,
and full encodes on the tiny checkpoints of tests/tiny_nvila.py."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import upstream_vila as uv
from PIL import Image
from tiny_nvila import build_all

S = 448  # NVILA tile size


def _img(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------ tiling (mm_utils.py)

@pytest.mark.parametrize("w,h,grid", [
    (448, 448, (1, 1)),     # tie (1,1)/(2,2): area 448^2 is not > half of 2x2 -> stays (1,1)
    (896, 896, (2, 2)),     # tie: 896^2 > 0.5*448^2*4 -> (2,2); not > 0.5*448^2*9 -> not (3,3)
    (1344, 1344, (3, 3)),   # ... and > 0.5*448^2*9 -> (3,3)
    (634, 634, (2, 2)),     # 634^2 = 401956 > 401408
    (633, 633, (1, 1)),     # 633^2 = 400689 < 401408
    (1344, 896, (3, 2)),    # 3:2 exactly: 3 columns, 2 rows
    (448, 1344, (1, 3)),
    (1000, 600, (3, 2)),    # 5:3 would need 15 tiles; within 12, 3:2 (|1.667 - 1.5|) beats 2:1 (|.333|)
])
def test_dynamic_grid(w, h, grid):
    assert uv.dynamic_grid(w, h, 1, 12, S) == grid


def test_target_ratios_and_empty_candidates():
    ratios = uv.target_ratios(1, 12)
    assert len(ratios) == len({(i, j) for i in range(1, 13) for j in range(1, 13) if i * j <= 12})
    assert [r[0] * r[1] for r in ratios] == sorted(r[0] * r[1] for r in ratios)
    assert ratios[0] == (1, 1)
    assert uv.target_ratios(9, 1) == []  # dynamic_s2 with max_tiles < 9
    assert uv.find_closest_aspect_ratio(2.0, [], 10, 5, S) == (1, 1)


def test_dynamic_preprocess_1344x896():
    im = _img(1344, 896)
    tiles = uv.dynamic_preprocess(im, 1, 12, S)
    assert len(tiles) == 7 and all(t.size == (S, S) for t in tiles)  # 3x2 + thumbnail
    assert len(uv.dynamic_preprocess(im, 1, 12, S, use_thumbnail=False)) == 6
    resized = im.resize((1344, 896), Image.BICUBIC)  # a copy: already that size
    for i, box in enumerate([(0, 0), (448, 0), (896, 0), (0, 448), (448, 448), (896, 448)]):  # row-major
        assert np.array_equal(np.asarray(tiles[i]), np.asarray(resized.crop((*box, box[0] + S, box[1] + S))))
    assert np.array_equal(np.asarray(tiles[-1]), np.asarray(im.resize((S, S), Image.BICUBIC)))  # thumbnail last
    one = uv.dynamic_preprocess(_img(448, 448), 1, 12, S)
    assert len(one) == 1  # a single tile gets no thumbnail
    assert len(uv.dynamic_preprocess(im, 1, 1, S)) == 1  # max_tiles 1: one tile, no thumbnail


@pytest.mark.parametrize("w,h,block,n_tiles", [
    (1344, 896, (3, 4), 17),   # aspect 1.5 among 9..12 tiles: (4,3) = 1.333 is closest -> rows 3, cols 4
    (896, 896, (3, 3), 14),
    (448, 448, (3, 3), 14),
    (448, 1344, (6, 2), 17),   # 1/3: (2,6) exact
    (2000, 500, (2, 6), 17),   # 4.0: (6,2) = 3.0 is the closest with 9..12 tiles
])
def test_dynamic_s2_preprocess_real_scales(w, h, block, n_tiles):
    im = _img(w, h)
    tiles, bs = uv.dynamic_s2_preprocess(im, [448, 896, 1344], 12, S)
    assert bs == block and len(tiles) == n_tiles == 1 + 4 + block[0] * block[1]
    assert np.array_equal(np.asarray(tiles[0]), np.asarray(im.resize((S, S), Image.BICUBIC)))
    r896 = im.resize((896, 896), Image.BICUBIC)
    assert np.array_equal(np.asarray(tiles[2]), np.asarray(r896.crop((448, 0, 896, 448))))  # 2x2 row-major
    assert np.array_equal(np.asarray(tiles[3]), np.asarray(r896.crop((0, 448, 448, 896))))
    last = im.resize((S * block[1], S * block[0]), Image.BICUBIC)
    assert np.array_equal(np.asarray(tiles[5 + 1]), np.asarray(last.crop((S, 0, 2 * S, S))))
    assert uv.expected_tokens("dynamic_s2", w, h, tile=448, patch=14, k=2, scales=[448, 896, 1344]) == [
        block[0] * block[1] * 256]


def test_dynamic_s2_max_tiles_below_nine():
    tiles, bs = uv.dynamic_s2_preprocess(_img(1344, 896), [448, 896, 1344], 1, S)
    assert bs == (1, 1) and len(tiles) == 6


# ------------------------------------------------------------------ chessboards

def test_chessboard_order_and_round_trip():
    x = torch.arange(16.).reshape(1, 1, 4, 4)
    t = uv.split_chessboard(x, 2)
    assert t[:, 0].tolist() == [[[0, 1], [4, 5]], [[2, 3], [6, 7]], [[8, 9], [12, 13]], [[10, 11], [14, 15]]]
    assert torch.equal(uv.merge_chessboard(t, 2), x)
    xb = torch.randn(2, 3, 6, 9)
    t = uv.split_chessboard_hw(xb, 2, 3)
    assert t.shape == (12, 3, 3, 3)
    assert torch.equal(t[(1 * 3 + 2) * 2 + 1], xb[1, :, 3:6, 6:9])  # slot (i*nw + j)*B + b
    assert torch.equal(uv.merge_chessboard_hw(t, 2, 3), xb)
    tokens = uv._map_to_tokens(t)  # [B, N, C] input to merge_chessboard
    assert torch.equal(uv.merge_chessboard_hw(tokens, 2, 3), xb)


# ------------------------------------------------------------------ S2 (s2wrapper)

def test_s2_real_sizes_vila15_3b_s2():
    calls = []

    def tower(x):  # shape-only SigLIP-so400m-384: 27x27 tokens, 1152 channels
        calls.append(tuple(x.shape))
        return torch.zeros(x.shape[0], (x.shape[-1] // 14) ** 2, 1152)

    out = uv.s2_forward(tower, torch.zeros(1, 3, 768, 768), [384, 768], 384, 0)
    assert calls == [(1, 3, 384, 384), (4, 3, 384, 384)]  # 5 tower passes
    assert out.shape == (1, 729, 2304)
    assert uv.downsample(out, 2, "column").shape == (1, 196, 4 * 2304)


def test_s2_is_torch_bicubic_without_antialias_then_area():
    """With a tower that is a 14x14 average pool, split + merge is the identity, so s2_forward must equal
    concat(area(avgpool(bicubic(x, s)))) computed directly."""
    x = torch.randn(2, 3, 140, 140)

    def tower(p):
        return uv._map_to_tokens(F.avg_pool2d(p, 14))

    out = uv.s2_forward(tower, x, [70, 140], 70, 0)
    ref = []
    for s in (70, 140):
        m = F.avg_pool2d(F.interpolate(x, size=s, mode="bicubic", align_corners=False), 14)
        ref.append(F.adaptive_avg_pool2d(m, 5))
    ref = uv._map_to_tokens(torch.cat(ref, 1))
    assert torch.allclose(out, ref, atol=1e-6)
    anti = F.interpolate(x, size=70, mode="bicubic", antialias=True)
    assert not torch.allclose(F.interpolate(x, size=70, mode="bicubic"), anti, atol=1e-3)
    assert torch.allclose(F.interpolate(x, size=140, mode="bicubic"), x, atol=1e-6)  # identity at the input size


# ------------------------------------------------------------------ dynamic_s2 merge (llava_arch.py)

def test_merge_features_channel_repeat_for_untiled_images():
    f = torch.randn(2, 16, 5)
    maps, sizes = uv.merge_features_for_dynamic_s2(f, [None, None], [448, 896, 1344])
    assert sizes == [(1, 1), (1, 1)] and maps[0].shape == (1, 15, 4, 4)
    m = uv._tokens_to_map(f[1:2])
    assert torch.equal(maps[1], torch.cat([m, m, m], 1))  # tiled copies, not repeat_interleave


def test_merge_features_real_sizes():
    """NVILA-8B at 1344x896: 17 tiles of 32x32 maps -> one [1, 3C, 96, 128] map, block (3, 4)."""
    c = 2
    f = torch.arange(17.).reshape(17, 1, 1).expand(17, 1024, c).clone()  # every tile constant = its index
    maps, sizes = uv.merge_features_for_dynamic_s2(f, [(3, 4)], [448, 896, 1344], -1)
    assert sizes == [(3, 4)] and maps[0].shape == (1, 3 * c, 96, 128)
    m = maps[0][0]
    assert (m[:c] == 0).all()                                  # scale 448: tile 0 stretched over the map
    assert m[c, 0, 0] == 1 and m[c, 95, 127] == 4               # scale 896: tiles 1..4 (2x2) area-resized 64 -> 96x128
    assert m[2 * c, 0, 0] == 5 and m[2 * c, 0, 127] == 8 and m[2 * c, 95, 0] == 13 and m[2 * c, 95, 127] == 16
    maps0, sizes0 = uv.merge_features_for_dynamic_s2(f, [(3, 4)], [448, 896, 1344], 0)
    assert sizes0 == [(1, 1)] and maps0[0].shape == (1, 3 * c, 32, 32)


def test_nvila_8b_token_counts():
    def tower(x):
        return torch.zeros(x.shape[0], 1024, 2)

    def proj(x):
        return uv.downsample(x, 2, "row")

    for (w, h), block in [((1344, 896), (3, 4)), ((896, 896), (3, 3)), ((448, 1344), (6, 2))]:
        tiles, bs = uv.dynamic_s2_preprocess(_img(w, h), [448, 896, 1344], 12, S)
        pixels = torch.zeros(len(tiles), 3, 4, 4)
        (out,) = uv.encode_dynamic_s2(tower, pixels, [bs], proj, [448, 896, 1344], -1)
        assert out.shape == (block[0] * block[1] * 256, 4 * 6)
    (multi,) = uv.encode_dynamic_s2(tower, torch.zeros(1, 3, 4, 4), [None], proj, [448, 896, 1344], -1)
    assert multi.shape == (256, 24)


def test_project_dynamic_s2_block_layout():
    """Projected blocks are placed back as a rows x cols board and flattened row-major over the whole image."""
    maps = [torch.arange(4 * 6.).reshape(1, 1, 4, 6)]  # a 2x3 board of 2x2 blocks

    def proj(x):  # mean of each 2x2 block: one token per block
        return x.mean(1, keepdim=True)

    (out,) = uv.project_dynamic_s2(maps, [(2, 3)], proj)
    assert out[:, 0].tolist() == [3.5, 5.5, 7.5, 15.5, 17.5, 19.5]


# ------------------------------------------------------------------ projector (base_projector.py)

def test_flat_square_orders_by_hand():
    x = torch.arange(16.).reshape(1, 16, 1)  # 4x4 map, value r*4 + c
    assert uv.downsample(x, 2, "row")[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert uv.downsample(x, 2, "column")[0].tolist() == [[0, 1, 4, 5], [8, 9, 12, 13], [2, 3, 6, 7],
                                                          [10, 11, 14, 15]]
    y = torch.arange(1, 26.).reshape(1, 25, 1)  # 5x5 -> padded to 6x6 for 3x3: bottom/right zeros
    t = uv.downsample(y, 3, "row")[0]
    assert t.shape == (4, 9)
    assert t[0].tolist() == [1, 2, 3, 6, 7, 8, 11, 12, 13]
    assert t[3].tolist() == [19, 20, 0, 24, 25, 0, 0, 0, 0]
    assert uv.downsample(y, 2, "row")[0][8].tolist() == [25, 0, 0, 0]


def test_real_token_counts_per_tile():
    assert uv.downsample(torch.zeros(1, 1024, 1), 3).shape[1] == 121  # NVILA-Lite: 32 -> 33 -> 11^2
    assert uv.downsample(torch.zeros(1, 1024, 1), 2).shape[1] == 256  # NVILA 448 block
    assert uv.downsample(torch.zeros(1, 729, 1), 2, "column").shape[1] == 196  # VILA1.5: 27 -> 28 -> 14^2
    assert uv.expected_tokens("dynamic", 1344, 896, tile=448, patch=14, k=3) == [121] * 7


def test_projector_layer_indices():
    keys = set(uv.UpstreamProjector("mlp_downsample_3x3_fix", 8, 16).state_dict())
    assert {k.split(".")[1] for k in keys} == {"1", "2", "4", "5", "7"}
    p = uv.UpstreamProjector("mlp_downsample", 8, 16)
    assert {k.split(".")[1] for k in p.state_dict()} == {"1", "2", "4"}
    assert p.layers[1].normalized_shape == (32,) and p.layers[2].in_features == 32


# ------------------------------------------------------------------ real configs

def test_settings_of_published_configs():
    nvila_8b = {  # TRT-LLM's NVILA_8B_CONFIG (a copy of Efficient-Large-Model/NVILA-8B/config.json)
        "dynamic_s2": True, "s2": False, "image_aspect_ratio": "dynamic_s2", "s2_scales": "448,896,1344",
        "s2_max_split_size": 448, "s2_resize_output_to_scale_idx": -1, "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch", "llm_cfg": {"model_type": "qwen2"}}
    st = uv.upstream_settings(nvila_8b, 1152)
    assert (st["mode"], st["mm_hidden"], st["processor_size"], st["resize_output_to_scale_idx"]) == (
        "dynamic_s2", 3456, 448, -1)
    assert (st["min_tiles"], st["max_tiles"], st["order"]) == (1, 12, "row")
    s2 = {"s2": True, "s2_scales": "768,384", "s2_max_split_size": 384, "image_aspect_ratio": "resize",
          "mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch", "llm_cfg": {"model_type": "llama"}}
    st = uv.upstream_settings(s2, 1152)
    assert (st["mode"], st["scales"], st["mm_hidden"], st["processor_size"], st["resize_output_to_scale_idx"],
            st["order"]) == ("s2", [384, 768], 2304, 768, 0, "column")
    lite = {"image_aspect_ratio": "dynamic", "s2": False, "dynamic_s2": False, "llm_cfg": {"model_type": "qwen2"}}
    st = uv.upstream_settings(lite, 1152)
    assert (st["mode"], st["mm_hidden"], st["processor_size"]) == ("dynamic", 1152, None)


def test_processor_matches_transformers():
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    im = _img(90, 60)
    hf = SiglipImageProcessorPil(size={"height": 70, "width": 70}, resample=3, image_mean=[0.5] * 3,
                                 image_std=[0.5] * 3)
    ref = torch.as_tensor(np.asarray(hf(im, return_tensors="np")["pixel_values"][0]))
    assert torch.allclose(uv.Processor(70)(im), ref, atol=1e-6)


# ------------------------------------------------------------------ full encodes on the tiny checkpoints

@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory, tokenizer_dirs):
    return build_all(tmp_path_factory.mktemp("tiny-nvila"), tokenizer_dirs)


@pytest.fixture(scope="module")
def models(tiny_ckpts):
    return {k: uv.load_upstream(v) for k, v in tiny_ckpts.items()}


def test_tiny_s2(models):
    m = models["s2"]
    assert (m.mode, m.scales, m.processor_size, m.order, m.family) == ("s2", [70, 140], 140, "column", "vila1.5")
    im = _img(100, 80, 1)
    enc = uv.encode_image_upstream(m, im)
    assert len(enc.blocks) == 1 and enc.blocks[0].shape == (9, 64) and enc.tower_passes == 5
    assert enc.end_text is None and enc.image_text == ["<image>"]
    # independent recomposition: tower on 5 hand-cut tiles, merge, area, concat, column-major projector
    x = m.processor(im.resize((140, 140), Image.BICUBIC))[None]
    tower = m.tower_fn()
    f70 = uv._tokens_to_map(tower(F.interpolate(x, size=70, mode="bicubic")))
    quads = [x[..., :70, :70], x[..., :70, 70:], x[..., 70:, :70], x[..., 70:, 70:]]
    q = [uv._tokens_to_map(tower(t)) for t in quads]
    f140 = torch.cat([torch.cat(q[:2], -1), torch.cat(q[2:], -1)], -2)
    feats = uv._map_to_tokens(torch.cat([f70, F.interpolate(f140, size=5, mode="area")], 1))
    assert torch.allclose(enc.blocks[0], m.projector(feats)[0], atol=1e-5)
    multi = uv.encode_images_upstream(m, [im, _img(50, 50, 2)])
    # batched, the tower's GEMMs may take another path: equal to fp32 rounding, not bit for bit
    assert [b.shape for b in multi.blocks] == [(9, 64)] * 2 and torch.allclose(multi.blocks[0], enc.blocks[0], atol=1e-5)


def test_tiny_nvila(models):
    m = models["nvila"]
    assert (m.mode, m.scales, m.processor_size, m.resize_output_to_scale_idx, m.max_tiles) == (
        "dynamic_s2", [56, 112, 168], 56, -1, 12)
    enc = uv.encode_image_upstream(m, _img(168, 112, 3))
    assert enc.block_sizes == [(3, 4)] and enc.tower_passes == 17 and len(enc.blocks) == 1
    assert enc.blocks[0].shape == (3 * 4 * 4, 64) and enc.end_text == "\n" and enc.image_text == ["<image>"]
    one = uv.encode_image_upstream(m, _img(168, 112, 3), max_tiles=1)
    assert one.block_sizes == [(1, 1)] and one.tower_passes == 6 and one.blocks[0].shape == (4, 64)
    im = _img(90, 70, 4)
    multi = uv.encode_images_upstream(m, [im, im])
    assert multi.block_sizes == [None, None] and [b.shape for b in multi.blocks] == [(4, 64)] * 2
    f = m.tower_fn()(m.processor(im)[None])  # processor resize to scales[0], channels x3, projector
    ref = m.projector(torch.cat([f, f, f], -1))[0]
    assert torch.allclose(multi.blocks[0], ref, atol=1e-5)


def test_tiny_nvila_lite(models):
    m = models["nvila_lite"]
    assert (m.mode, m.processor_size, m.projector.projector_type) == ("dynamic", 70, "mlp_downsample_3x3_fix")
    enc = uv.encode_image_upstream(m, _img(140, 210, 5))  # 2 columns x 3 rows + thumbnail
    assert len(enc.blocks) == 7 and all(b.shape == (4, 64) for b in enc.blocks)
    assert enc.image_text == ["<image>\n" * 7] and enc.end_text == "\n"
    assert len(uv.encode_image_upstream(m, _img(140, 210, 5), max_tiles=1).blocks) == 1
    multi = uv.encode_images_upstream(m, [_img(140, 210, 5), _img(30, 40, 6)])
    assert len(multi.blocks) == 2 and multi.image_text == ["<image>", "<image>"]


def test_hf_conversions_match(models, tiny_ckpts):
    import json

    cfg = json.loads((tiny_ckpts["nvila_hf"] / "config.json").read_text())
    assert cfg["model_type"] == "nvila" and cfg["architectures"] == ["NVILAForConditionalGeneration"]
    assert {"text_config", "vision_config", "image_token_id", "video_token_id"} <= set(cfg)
    from safetensors import safe_open

    with safe_open(tiny_ckpts["nvila_hf"] / "model.safetensors", "pt") as f:
        prefixes = {k.split(".")[0] for k in f.keys()}
        assert "mm_projector.layers.1.weight" in f.keys() and "vision_tower.vision_model.post_layernorm.weight" in f.keys()
    assert prefixes == {"llm", "vision_tower", "mm_projector"}
    for vila, hf in (("nvila", "nvila_hf"), ("nvila_lite", "vila_hf")):
        im = _img(150, 100, 7)
        a, b = uv.encode_image_upstream(models[vila], im), uv.encode_image_upstream(models[hf], im)
        assert len(a.blocks) == len(b.blocks)
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.blocks, b.blocks))
    lite = json.loads((tiny_ckpts["vila_hf"] / "config.json").read_text())
    assert lite["model_type"] == "vila" and lite["mm_projector_type"] == "mlp_downsample_3x3_fix"


def test_tiny_arithmetic_matches_real():
    """The tiny sizes take the same branches as the real ones (see tests/tiny_nvila.py)."""
    assert 70 // 14 % 2 == 27 % 2 == 1 and math.ceil(5 / 3) * 3 - 5 == 33 - 32 == 1
    assert 56 // 14 % 2 == 32 % 2 == 0
    assert [s // 56 for s in (56, 112, 168)] == [s // 448 for s in (448, 896, 1344)]


def test_tiny_nvila_square_recomposed(models):
    """The whole dynamic_s2 chain recomputed with explicit loops: a square image -> 1 + 4 + 9 tiles; per-scale boards;
    area resize to 12x12; nine 4x4 blocks projected separately; their 2x2 token maps placed on a 3x3 board."""
    m = models["nvila"]
    im = _img(120, 120, 8)
    enc = uv.encode_image_upstream(m, im)
    assert enc.block_sizes == [(3, 3)] and enc.tower_passes == 14
    tower = m.tower_fn()
    feats = [uv._tokens_to_map(tower(m.processor(t)[None]))[0] for t in enc.tiles]  # each [C, 4, 4]
    s0 = feats[0]
    s1 = torch.cat([torch.cat(feats[1:3], 2), torch.cat(feats[3:5], 2)], 1)            # [C, 8, 8]
    s2 = torch.cat([torch.cat(feats[5 + 3 * r:8 + 3 * r], 2) for r in range(3)], 1)    # [C, 12, 12]
    full = torch.cat([F.adaptive_avg_pool2d(s[None], 12)[0] for s in (s0, s1, s2)], 0)  # area == adaptive avg pool
    board = torch.zeros(6, 6, 64)
    for r in range(3):
        for c in range(3):
            block = full[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4].flatten(1).T[None]      # [1, 16, 3C] row-major
            board[2 * r:2 * r + 2, 2 * c:2 * c + 2] = m.projector(block)[0].reshape(2, 2, 64)
    assert torch.allclose(enc.blocks[0], board.reshape(36, 64), atol=1e-5)


def test_s2_order_option(tiny_ckpts):
    """VILA1.5 (May24) mlp_downsample is column-major; HEAD's is row-major: the same tokens, transposed on the grid."""
    im = _img(100, 80, 9)
    col = uv.encode_image_upstream(uv.load_upstream(tiny_ckpts["s2"]), im).blocks[0]
    row = uv.encode_image_upstream(uv.load_upstream(tiny_ckpts["s2"], order="row"), im).blocks[0]
    assert torch.allclose(col, row.reshape(3, 3, -1).transpose(0, 1).reshape(9, -1), atol=1e-6)
    assert not torch.allclose(col, row, atol=1e-3)

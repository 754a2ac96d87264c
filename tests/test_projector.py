"""Projector token order against literal replicas of the upstream view/permute chains."""

import pytest
import torch

from vila_edge.arch import tokens_after
from vila_edge.model.projector import Downsample, Projector


def flat_square_may24(x):
    """VILA May24 / Sep24 DownSampleBlock.flat_square (released with VILA1.5): no trailing permute."""
    n, w, h, c = x.size()
    if w % 2 == 1:
        x = torch.concat([x, torch.zeros((n, 1, h, c), dtype=x.dtype)], dim=1).contiguous()
        n, w, h, c = x.size()
    if h % 2 == 1:
        x = torch.concat([x, torch.zeros((n, w, 1, c), dtype=x.dtype)], dim=2).contiguous()
        n, w, h, c = x.size()
    x = x.view(n, w, int(h / 2), int(c * 2))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h / 2), int(w / 2), int(c * 4))
    return x


def flat_square_head(x):
    """NVILA-era code (and the 2x2 fix): the same chain plus a trailing permute."""
    return flat_square_may24(x).permute(0, 2, 1, 3).contiguous()


def flat_square_3x3(x):
    n, w, h, c = x.size()
    if w % 3 != 0:
        x = torch.concat([x, torch.zeros((n, 3 - (w % 3), h, c), dtype=x.dtype)], dim=1).contiguous()
        n, w, h, c = x.size()
    if h % 3 != 0:
        x = torch.concat([x, torch.zeros((n, w, 3 - (h % 3), c), dtype=x.dtype)], dim=2).contiguous()
        n, w, h, c = x.size()
    x = x.view(n, w, int(h / 3), int(c * 3))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h / 3), int(w / 3), int(c * 9))
    x = x.permute(0, 2, 1, 3).contiguous()
    return x


def upstream(fn, tokens):
    b, n, c = tokens.shape
    g = int(n**0.5)
    out = fn(tokens.reshape(b, g, g, c))
    return out.reshape(b, -1, out.shape[-1])


@pytest.mark.parametrize("g", [4, 5, 27])
def test_downsample_2x2_orders(g):
    x = torch.randn(2, g * g, 3)
    assert torch.equal(Downsample(2, "column")(x), upstream(flat_square_may24, x))
    assert torch.equal(Downsample(2, "row")(x), upstream(flat_square_head, x))
    assert not torch.equal(Downsample(2, "column")(x), Downsample(2, "row")(x))


@pytest.mark.parametrize("g", [5, 6, 32])
def test_downsample_3x3_row(g):
    x = torch.randn(1, g * g, 2)
    assert torch.equal(Downsample(3, "row")(x), upstream(flat_square_3x3, x))


def test_concat_order_within_a_block():
    # one channel holding each token's (row, col): block (0, 0) is [(0,0), (0,1), (1,0), (1,1)]
    g = 4
    pos = torch.tensor([[r * 10 + c] for r in range(g) for c in range(g)], dtype=torch.float32)[None]
    assert Downsample(2, "row")(pos)[0, 0].tolist() == [0, 1, 10, 11]
    assert Downsample(2, "row")(pos)[0, 1].tolist() == [2, 3, 12, 13]  # row-major: next block to the right
    assert Downsample(2, "column")(pos)[0, 1].tolist() == [20, 21, 30, 31]  # column-major: next block below


def test_tokens_after():
    assert tokens_after(729, 2) == 196 and tokens_after(1024, 3) == 121 and tokens_after(25, 1) == 25
    assert tokens_after(1024, 2) == 256


@pytest.mark.parametrize("ptype,keys", [
    ("mlp_downsample", {"layers.1.weight", "layers.2.weight", "layers.4.weight"}),
    ("mlp_downsample_3x3_fix", {"layers.1.weight", "layers.2.weight", "layers.4.weight", "layers.5.weight", "layers.7.weight"}),
    ("linear", {"layers.weight"}),
    ("mlp2x_gelu", {"layers.0.weight", "layers.2.weight"}),
])
def test_projector_state_dict_keys_match_vila(ptype, keys):
    sd = Projector(ptype, 8, 16).state_dict()
    assert keys <= set(sd) and all(k.startswith("layers.") for k in sd)

"""mm_projector: VILA's projectors, with the token order of the code each checkpoint was trained with.

The weights index into an nn.Sequential (`layers.N.*`), so each projector is built as
that exact Sequential and loaded with strict key matching.
"""

import torch
from torch import nn

from ..arch import ORDERS, PROJECTORS


class Downsample(nn.Module):
    """[B, g·g, C] -> [B, ⌈g/k⌉², k²·C]: concatenate each k×k block (row offset major, column offset minor)."""

    def __init__(self, k: int, order: str):
        super().__init__()
        assert order in ORDERS
        self.k, self.order = k, order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # grid and width are fixed by the tower; only the batch stays symbolic in an ONNX export
        n, c = int(x.shape[1]), int(x.shape[2])
        g, k = round(n**0.5), self.k
        x = x.reshape(-1, g, g, c)  # [B, row, col, C]
        pad = -g % k
        x = nn.functional.pad(x, (0, 0, 0, pad, 0, pad))  # zero rows at the bottom, zero columns at the right
        m = (g + pad) // k
        x = x.reshape(-1, m, k, m, k, c)  # [B, block row, row offset, block col, col offset, C]
        if self.order == "row":
            x = x.permute(0, 1, 3, 2, 4, 5)  # block row outer
        else:
            x = x.permute(0, 3, 1, 2, 4, 5)  # block column outer
        return x.reshape(-1, m * m, k * k * c)


class Projector(nn.Module):
    """Vision features [B, N, m] -> LLM embeddings [B, T, H]."""

    def __init__(self, projector_type: str, mm_hidden: int, llm_hidden: int, order: str | None = None):
        super().__init__()
        spec = PROJECTORS[projector_type]
        m, h, gelu = mm_hidden, llm_hidden, nn.GELU  # exact erf GELU, as trained
        if projector_type == "linear":
            self.layers = nn.Linear(m, h)
        elif projector_type == "mlp2x_gelu":
            self.layers = nn.Sequential(nn.Linear(m, h), gelu(), nn.Linear(h, h))
        elif spec.downsample == 2:
            ds = Downsample(2, order or spec.order)
            self.layers = nn.Sequential(ds, nn.LayerNorm(4 * m), nn.Linear(4 * m, h), gelu(), nn.Linear(h, h))
        else:
            ds = Downsample(3, order or spec.order)
            self.layers = nn.Sequential(
                ds, nn.LayerNorm(9 * m), nn.Linear(9 * m, 3 * m), gelu(),
                nn.LayerNorm(3 * m), nn.Linear(3 * m, h), gelu(), nn.Linear(h, h),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

"""Vision tower with VILA's feature selection: hidden_states[select_layer], cls_patch or patch."""

import torch
from torch import nn


class VisionEncoder(nn.Module):
    """pixels [B, 3, S, S] -> features [B, N, C]."""

    def __init__(self, tower: nn.Module, select_layer: int, select_feature: str):
        super().__init__()
        if select_feature not in ("cls_patch", "patch"):
            raise ValueError(f"mm_vision_select_feature {select_feature!r}: expected cls_patch or patch")
        self.tower, self.select_layer, self.select_feature = tower, select_layer, select_feature

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # hidden_states[0] is the embeddings; -2 is the input of the last layer (before post-LN)
        hidden = self.tower(pixels, output_hidden_states=True).hidden_states[self.select_layer]
        return hidden[:, 1:] if self.select_feature == "patch" else hidden

"""Vision tower with VILA's feature selection: hidden_states[select_layer], cls_patch or patch."""

import torch
from torch import nn


class VisionEncoder(nn.Module):
    """pixels [B, 3, S, S] -> features [B, N, C].

    hidden_states[k] of an HF SigLIP/CLIP/InternViT/DINOv2 tower is the output of its first k encoder layers
    (hidden_states[0]: the embeddings, after CLIP's pre-LN), so only those k layers are kept:
    with VILA's select_layer -2 the last layer, and the post-LN and head, never run (nor get exported).
    """

    def __init__(self, tower: nn.Module, select_layer: int, select_feature: str, layers: str = "encoder.layers",
                 layer_takes_mask: bool = True):
        super().__init__()
        if select_feature not in ("cls_patch", "patch"):
            raise ValueError(f"mm_vision_select_feature {select_feature!r}: expected cls_patch or patch")
        vm = getattr(tower, "vision_model", tower)  # transformers 4 wraps the transformer; 5 does not always
        stack = vm.get_submodule(layers)  # arch.VisionTower.layers: encoder.layers, InternVL's and DINOv2's encoder.layer
        n_layers = len(stack)
        if not -(n_layers + 1) <= select_layer <= n_layers:
            raise ValueError(f"mm_vision_select_layer {select_layer} is outside a tower of {n_layers} layers")
        self.embeddings = vm.embeddings
        self.pre_norm = getattr(vm, "pre_layrnorm", None) or nn.Identity()  # CLIP only
        self.layers = nn.ModuleList(stack[: select_layer % (n_layers + 1)])
        self.select_feature = select_feature
        self.layer_kwargs = {"attention_mask": None} if layer_takes_mask else {}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.pre_norm(self.embeddings(pixels))
        for layer in self.layers:
            out = layer(hidden, **self.layer_kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden[:, 1:] if self.select_feature == "patch" else hidden

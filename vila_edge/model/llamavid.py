"""LLaMA-VID's vision side after the tower (llamavid_arch.py::vlm_attention, token_generation): the question through the
Q-Former over each frame's features gives one context token, the frame's patches pooled give its content tokens.

Attribute names are the checkpoint's (`vlm_att_encoder`, `vlm_att_query`, ...), so its `vlm_att` tensors load as they
are. One question conditions every frame (upstream's single prompt); float32 here, fp16 upstream (for_eval).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..llamavid_format import LlamaVid
from .qformer import QFormer


class LlamaVidAttention(nn.Module):
    """features [N, P(+1), C] (the tower's output, class token first) and the question's BERT ids [1, L]
    -> LLM tokens [N, 1 + content, H]: [context, content...] per frame."""

    def __init__(self, spec: LlamaVid, shapes: dict[str, list[int]], projector: nn.Module):
        super().__init__()
        self.spec = spec
        query = shapes["vlm_att_query"]  # [1, num_query, W]
        att_width = shapes["vlm_att_projector.weight"][0]  # mm_hidden_size
        bert_width = shapes.get("vlm_att_ln.weight", [att_width])[0]  # what the Q-Former cross-attends (1408)
        layers = 1 + max(int(k.split(".")[4]) for k in shapes if k.startswith("vlm_att_encoder.bert.encoder.layer."))
        self.vlm_att_encoder = QFormer(spec.bert, layers, bert_width)
        self.vlm_att_query = nn.Parameter(torch.zeros(query))
        self.pretrain = "pretrain" in spec.bert_type
        if self.pretrain:
            self.vlm_att_ln = nn.LayerNorm(bert_width)  # eps 1e-5: torch.nn.LayerNorm(att_feat_size)
        if "vlm_att_bert_proj.weight" in shapes:  # a tower narrower than the pre-trained Q-Former's 1408
            self.vlm_att_bert_proj = nn.Linear(att_width, bert_width)
        self.vlm_att_projector = nn.Linear(query[2], att_width)
        self.vlm_att_key_projector = nn.Linear(att_width, att_width)
        self.vlm_att_val_projector = nn.Linear(att_width, shapes["vlm_att_val_projector.weight"][0])
        self.mm_projector = projector

    def load(self, state: dict[str, torch.Tensor], where) -> "LlamaVidAttention":
        state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
        state.update({f"mm_projector.{k}": v for k, v in self.mm_projector.state_dict().items()})
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise CheckpointError(f"{where}: LLaMA-VID's attention modules do not match ({what}); copy them again")
        return self.eval()

    def forward(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        n = features.shape[0]
        bert_in = self.vlm_att_bert_proj(features) if hasattr(self, "vlm_att_bert_proj") else features
        patches = features
        if self.spec.select_feature == "patch" and features.shape[1] % 2 == 1:  # the class token dropped
            patches = features[:, 1:]
        if self.pretrain:
            bert_in = self.vlm_att_ln(bert_in)
        queries = self.vlm_att_query.expand(n, -1, -1)
        out = self.vlm_att_encoder(ids.expand(n, -1), queries, bert_in)
        return torch.cat([self.context(self.vlm_att_projector(out), patches), self.content(patches)], dim=1)

    def context(self, text_q: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """token_generation part 1: the queries attend over the key-projected patches; the mean over queries."""
        # the scale on the queries before the product (upstream divides after it): a 1408-wide dot product of EVA-G's
        # features can pass fp16's 65504 before the division, in the fp16 graph TensorRT runs; math.sqrt keeps it a
        # constant there (a traced shape ** 0.5 stays an fp32 Cast the fp16 copy cannot hold)
        scale = 1 / math.sqrt(patches.shape[-1])
        scores = (text_q * scale) @ self.vlm_att_key_projector(patches).transpose(-1, -2)
        return self.vlm_att_val_projector((scores.softmax(-1) @ patches).mean(1)[:, None])

    def content(self, patches: torch.Tensor) -> torch.Tensor:
        """token_generation part 2: the patches pooled by compress_type, through mm_projector."""
        kind = self.spec.compress_type or ""
        if "grid" in kind:
            side = int(patches.shape[1] ** 0.5)
            stride = side // int(kind.split("grid:")[-1])
            grid = patches.reshape(patches.shape[0], side, side, -1).permute(0, 3, 1, 2)
            patches = F.avg_pool2d(grid, kernel_size=stride, stride=stride).permute(0, 2, 3, 1).flatten(1, 2)
        elif "mean" in kind:
            patches = patches.mean(dim=1, keepdim=True)
        return self.mm_projector(patches)

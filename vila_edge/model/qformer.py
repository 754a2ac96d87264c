"""LLaMA-VID's Q-Former: LAVIS's BERT (llamavid/model/qformer.py, BertModel with query_embeds) in PyTorch, under the
checkpoint's own tensor names (`bert.embeddings.*`, `bert.encoder.layer.N.*`).

The learned queries are prepended to the question's word embeddings (no token-type embedding), one LayerNorm over
both; every layer runs self-attention over queries and text together, cross-attention from the queries only to the
image features in layers 0, 2, 4, ... (cross_attention_freq 2), and separate feed-forwards for the queries
(intermediate_query / output_query) and for the text (intermediate / output). Post-LN residuals, exact GELU.
"""

import math

import torch
from torch import nn

from ..arch import QFORMER_CROSS_ATTENTION_FREQ


class _SelfOutput(nn.Module):
    def __init__(self, width: int, eps: float, inner: int | None = None):
        super().__init__()
        self.dense = nn.Linear(inner or width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Heads(nn.Module):  # BertSelfAttention: queries from x, keys and values from x or the image features
    def __init__(self, width: int, heads: int, kv_width: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(kv_width, width), nn.Linear(kv_width, width)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(kv)), self.split(self.value(kv))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores + mask
        out = scores.softmax(-1) @ v
        return out.transpose(1, 2).reshape(*x.shape[:2], -1)


class _Attention(nn.Module):  # BertAttention
    def __init__(self, width: int, heads: int, eps: float, kv_width: int | None = None):
        super().__init__()
        self.self = _Heads(width, heads, kv_width or width)
        self.output = _SelfOutput(width, eps)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        return self.output(self.self(x, x if kv is None else kv, mask), x)


class QFormerLayer(nn.Module):
    def __init__(self, c: dict, index: int, vision_width: int):
        super().__init__()
        width, heads, eps, inner = c["hidden_size"], c["num_attention_heads"], c["layer_norm_eps"], c["intermediate_size"]
        self.attention = _Attention(width, heads, eps)
        if index % QFORMER_CROSS_ATTENTION_FREQ == 0:
            self.crossattention = _Attention(width, heads, eps, vision_width)
        self.intermediate, self.output = _Dense(width, inner), _SelfOutput(width, eps, inner)  # the text's
        self.intermediate_query, self.output_query = _Dense(width, inner), _SelfOutput(width, eps, inner)

    def _ffn(self, x: torch.Tensor, query: bool) -> torch.Tensor:
        inner, out = (self.intermediate_query, self.output_query) if query else (self.intermediate, self.output)
        return out(nn.functional.gelu(inner.dense(x)), x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, image: torch.Tensor, n_query: int) -> torch.Tensor:
        x = self.attention(x, mask=mask)
        q = x[:, :n_query]
        if hasattr(self, "crossattention"):
            q = self.crossattention(q, image)
        q = self._ffn(q, True)
        return torch.cat([q, self._ffn(x[:, n_query:], False)], dim=1) if x.shape[1] > n_query else q


class _Dense(nn.Module):  # BertIntermediate, its GELU applied by the caller
    def __init__(self, width: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(width, inner)


class _Embeddings(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, ids: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        text = self.word_embeddings(ids) + self.position_embeddings(positions)[None]
        return self.LayerNorm(torch.cat([queries, text], dim=1))


class _Bert(nn.Module):
    def __init__(self, c: dict, layers: int, vision_width: int):
        super().__init__()
        self.embeddings = _Embeddings(c)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(QFormerLayer(c, i, vision_width) for i in range(layers))

    def forward(self, ids, queries, image, mask=None):
        x = self.embeddings(ids, queries)
        for layer in self.encoder.layer:
            x = layer(x, mask, image, queries.shape[1])
        return x[:, : queries.shape[1]]


class QFormer(nn.Module):
    """ids [B, L] (the question's BERT ids), queries [B, Q, W], image [B, P, C] -> the queries' outputs [B, Q, W].
    `mask` [B, L] (1: a token, 0: padding) only where questions of several lengths share a batch."""

    def __init__(self, bert: dict, layers: int, vision_width: int):
        super().__init__()
        self.bert = _Bert(bert, layers, vision_width)

    def forward(self, ids, queries, image, mask=None):
        if mask is not None:  # get_extended_attention_mask: (1 - mask) * -10000 over [queries, text]
            full = torch.cat([torch.ones(queries.shape[:2], dtype=mask.dtype, device=mask.device), mask], dim=1)
            mask = (1.0 - full[:, None, None, :].to(queries.dtype)) * -10000.0
        return self.bert(ids, queries, image, mask)

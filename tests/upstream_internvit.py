"""An independent oracle of VILA1.5-40b's vision path: InternViT-6B and its preprocessing, in plain torch.

Written from the upstream code, not from vila_edge (whose InternViT runs on transformers' InternVLVisionModel) nor
from transformers. Upstream sources read (NVlabs/VILA, May 2024 release ``1c88211``, the code VILA1.5-40b shipped
with):

- ``llava/model/multimodal_encoder/intern/modeling_intern_vit.py``: InternRMSNorm, InternVisionEmbeddings,
  InternAttention (the ``_naive_attn`` path; ``_flash_attn`` normalises q and k over the same flattened width),
  InternMLP, InternVisionEncoderLayer (ls1 / ls2, drop path off at inference), InternVisionEncoder (hidden states:
  the embeddings, then each layer's output), InternVisionModel (no post-LN).
- ``llava/model/multimodal_encoder/intern/configuration_intern_vit.py``: InternVisionConfig's defaults.
- ``llava/model/multimodal_encoder/intern_encoder.py``: build_transform, InternVisionPreprocessor (size 448,
  hard-coded), InternVisionTower; ``builder.py::build_vision_tower`` (dispatch on "intern" in the name).
- ``llava/model/multimodal_encoder/vision_encoder.py::VisionTower.feature_select`` and ``llava/mm_utils.py::
  process_image`` ("resize": PIL resize to the processor's size first).

The parameter names are the original InternViT ones, as VILA saves them in vision_tower/*.safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # build_transform's T.Normalize
IMAGENET_STD = (0.229, 0.224, 0.225)
CONFIG_DEFAULTS = dict(num_channels=3, patch_size=14, image_size=224, qkv_bias=False, hidden_size=3200,
                       num_attention_heads=25, intermediate_size=12800, qk_normalization=True, num_hidden_layers=48,
                       hidden_act="gelu", layer_norm_eps=1e-6, initializer_factor=0.1)  # InternVisionConfig.__init__


# ---------------------------------------------------------------------------------------------------------------
# Pixels: process_image ("resize") then InternVisionPreprocessor.preprocess = build_transform(448)
# ---------------------------------------------------------------------------------------------------------------

def to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision ToTensor on an RGB PIL image: HWC uint8 -> CHW float32 divided by 255 (in float32)."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    return x.to(torch.float32).div(255)


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """torchvision Normalize: (x - mean) / std per channel, in the tensor's dtype."""
    m = torch.as_tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.as_tensor(std, dtype=x.dtype)[:, None, None]
    return x.sub(m).div(s)


def build_transform(input_size: int):
    """intern_encoder.py::build_transform: RGB, T.Resize((s, s), BICUBIC) (on PIL: Image.resize, antialiased; a copy
    when the size is already s x s), ToTensor, Normalize with ImageNet's mean and std."""
    def transform(image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB") if image.mode != "RGB" else image
        image = image.resize((input_size, input_size), Image.BICUBIC)
        return normalize(to_tensor(image))
    return transform


def process_image(image: Image.Image, size: int) -> torch.Tensor:
    """mm_utils.py::process_image with image_aspect_ratio "resize": the processor has no crop_size, so its `size`
    ({448, 448}; here the tiny tower's own) is taken, and the image PIL-resized to it (Pillow's default filter,
    BICUBIC) before the processor's transform runs. [3, s, s]"""
    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return build_transform(size)(image)


# ---------------------------------------------------------------------------------------------------------------
# The tower: modeling_intern_vit.py
# ---------------------------------------------------------------------------------------------------------------

class InternRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """UPSTREAM: the statistics in float32, the weight applied after casting back."""
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


class InternVisionEmbeddings(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        c, p = cfg["hidden_size"], cfg["patch_size"]
        self.class_embedding = nn.Parameter(torch.randn(1, 1, c))
        self.patch_embedding = nn.Conv2d(3, c, kernel_size=p, stride=p)  # with a bias
        self.position_embedding = nn.Parameter(torch.randn(1, (cfg["image_size"] // p) ** 2 + 1, c))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 1 + (S/p)^2, C]: the class token first, then the patches row by row, + positions."""
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(pixel_values.shape[0], 1, -1).to(dtype)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.to(dtype)


class InternAttention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embed_dim, self.num_heads = cfg["hidden_size"], cfg["num_attention_heads"]
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=cfg["qkv_bias"])
        self.qk_normalization = cfg["qk_normalization"]
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(self.embed_dim, eps=cfg["layer_norm_eps"])
            self.k_norm = InternRMSNorm(self.embed_dim, eps=cfg["layer_norm_eps"])
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """_naive_attn. UPSTREAM: qkv's output features are (3, heads, head_dim); q and k are RMS-normalised over the
        whole width (all heads at once, heads back in the token's row) before the heads are split."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, N, d]
        if self.qk_normalization:
            _, h, _, d = q.shape
            q = self.q_norm(q.transpose(1, 2).flatten(-2, -1)).view(b, n, h, d).transpose(1, 2)
            k = self.k_norm(k.transpose(1, 2).flatten(-2, -1)).view(b, n, h, d).transpose(1, 2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class InternMLP(nn.Module):
    ACTS = {"gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}  # ACT2FN

    def __init__(self, cfg: dict):
        super().__init__()
        self.act = self.ACTS[cfg["hidden_act"]]
        self.fc1 = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.fc2 = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"])

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        c = cfg["hidden_size"]
        self.attn = InternAttention(cfg)
        self.mlp = InternMLP(cfg)
        self.norm1 = InternRMSNorm(c, eps=cfg["layer_norm_eps"])  # UPSTREAM: RMSNorm always
        self.norm2 = InternRMSNorm(c, eps=cfg["layer_norm_eps"])
        self.ls1 = nn.Parameter(cfg["initializer_factor"] * torch.ones(c))
        self.ls2 = nn.Parameter(cfg["initializer_factor"] * torch.ones(c))

    def forward(self, x):
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class InternVisionEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = nn.ModuleList(InternVisionEncoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))


class InternVisionModel(nn.Module):
    """pixels -> hidden_states (output_hidden_states=True): [embeddings, layer 1, ..., layer L]; no post-LN."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.config = {**CONFIG_DEFAULTS, **cfg}
        self.embeddings = InternVisionEmbeddings(self.config)
        self.encoder = InternVisionEncoder(self.config)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.embeddings(pixel_values)
        states = [hidden]
        for layer in self.encoder.layers:
            hidden = layer(hidden)
            states.append(hidden)
        return tuple(states)

    @classmethod
    def from_folder(cls, folder: Path) -> "InternVisionModel":
        """vision_tower/: config.json and the safetensors, in float32 (strict: every name must match)."""
        cfg = json.loads((Path(folder) / "config.json").read_text())
        model = cls({k: v for k, v in cfg.items() if k in CONFIG_DEFAULTS})
        state = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            state.update({k: v.float() for k, v in load_file(f).items()})
        model.load_state_dict(state, strict=True)
        return model.float().eval()


def feature_select(hidden_states: tuple[torch.Tensor, ...], select_layer: int, select_feature: str) -> torch.Tensor:
    """vision_encoder.py::VisionTower.feature_select: hidden_states[select_layer]; `patch` drops token 0 (the CLS)."""
    x = hidden_states[select_layer]
    return x[:, 1:] if select_feature == "patch" else x

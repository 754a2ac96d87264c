"""The reference VILA model in PyTorch: tokenizer, vision tower, projector and LLM, as published."""

import numpy as np
import torch
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    Dinov2Model,
    DynamicCache,
    SiglipVisionModel,
)
from transformers.utils import logging as hf_logging

from ..arch import ORDERS, get_tower
from ..awq_checkpoint import is_awq, load_awq_llm
from ..checkpoint import Checkpoint
from ..errors import UnsupportedError, UsageError
from ..part_weights import read_part
from ..prompt import splice_parts
from ..tiling import encode_multiscale
from .eva_vit import load_eva_vit
from .intern_vit import load_intern_vit
from .llamavid import LlamaVidAttention
from .projector import Projector
from .vision import VisionEncoder

_TOWER_CLASSES = {"SiglipVisionModel": SiglipVisionModel, "CLIPVisionModel": CLIPVisionModel, "Dinov2Model": Dinov2Model}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible to PyTorch; use --device cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """auto: fp16 on CUDA, as VILA's loader; fp32 on CPU, where fp16 matmuls are slow or missing."""
    if dtype == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return DTYPES[dtype]


def load_tokenizer(ckpt: Checkpoint):
    # VILA: AutoTokenizer(llm/, use_fast=False, legacy=False); transformers 5 always builds the fast one.
    return AutoTokenizer.from_pretrained(ckpt.llm_dir, legacy=False, padding_side="right")


def _load_projector(ckpt: Checkpoint, order: str | None, dtype: torch.dtype) -> Projector:
    if order is not None and order not in ORDERS:
        raise UsageError(f"--projector-order {order!r}: expected one of {', '.join(ORDERS)}")
    projector = Projector(ckpt.projector_type, ckpt.mm_hidden, ckpt.llm_hidden, ckpt.projector_order(order) or None)
    projector.load_state_dict(read_part(ckpt, "mm_projector"), strict=True)
    return projector.to(dtype).eval()


def load_vision(ckpt: Checkpoint, dtype: torch.dtype, projector_order: str | None = None):
    """(VisionEncoder, Projector) on the CPU, eval mode: the image half of the model."""
    spec = get_tower(ckpt.vision_kind, str(ckpt.vision_dir / "config.json"))
    hf_logging.disable_progress_bar()  # per-tensor bars for a load that takes a second
    if spec.kind == "eva":  # LLaMA-VID's LAVIS EVA-ViT-g: its names mapped onto transformers' Blip2VisionModel
        tower = load_eva_vit(ckpt.weights["vision_tower"][0], ckpt.vision_config, spec, dtype)
    elif spec.renames:  # VILA's own tower code (InternViT): its weight names mapped onto transformers' class
        tower = load_intern_vit(ckpt.vision_dir, ckpt.weights["vision_tower"], ckpt.vision_config, spec, dtype)
    elif ckpt.renames.get("vision_tower"):  # in shards shared with the other parts (a LLaVA-1.5 folder)
        cls = _TOWER_CLASSES[spec.hf_class]
        config = cls.config_class.from_dict(ckpt.vision_config)
        tower = cls.from_pretrained(None, config=config, state_dict=read_part(ckpt, "vision_tower"), dtype=dtype)
    else:
        tower = _TOWER_CLASSES[spec.hf_class].from_pretrained(
            ckpt.vision_dir, dtype=dtype, use_safetensors=not ckpt.is_pickle("vision_tower")
        )
    vision = VisionEncoder(tower, ckpt.select_layer, ckpt.select_feature, spec.layers, spec.layer_takes_mask).eval()
    return vision, _load_projector(ckpt, projector_order, dtype)


def load_attention(ckpt: Checkpoint, projector: Projector, dtype: torch.dtype) -> LlamaVidAttention:
    """LLaMA-VID's Q-Former, its projections and mm_projector: the frame tokens from tower features and a question."""
    state = read_part(ckpt, "vlm_att")
    shapes = {k: list(v.shape) for k, v in state.items()}
    return LlamaVidAttention(ckpt.llamavid, shapes, projector).load(state, ckpt.weights["vlm_att"][0]).to(dtype)


def load_llm(ckpt: Checkpoint, dtype: torch.dtype):
    """The fp LLM (an HF *ForCausalLM, eval mode, on the CPU): from llm/, or from the shards of a LLaVA-1.5 folder."""
    hf_logging.disable_progress_bar()
    if not ckpt.renames.get("llm"):
        return AutoModelForCausalLM.from_pretrained(
            ckpt.llm_dir, dtype=dtype, use_safetensors=not ckpt.is_pickle("llm")
        ).eval()
    c = {k: v for k, v in ckpt.llm_config.items() if k != "model_type"}
    config = AutoConfig.for_model(ckpt.llm_config["model_type"], **c)
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(
        None, config=config, state_dict=read_part(ckpt, "llm"), dtype=dtype
    )
    return model.eval()


class VilaModel:
    """Images and prompt ids in, LLM logits out; the KV cache lives here between calls.

    `vision`, when given, replaces the PyTorch tower + projector: a callable from pixels [N, 3, S, S]
    float32 to image embeddings [N, T, H] (numpy), such as the W8A8 ONNX through ONNX Runtime; for a multi-scale
    (S2 / NVILA) checkpoint, pixels to the tower's features, with `projector` from merged features to embeddings."""

    def __init__(self, ckpt: Checkpoint, device: str = "cpu", dtype: str = "auto", projector_order: str | None = None,
                 vision=None, projector=None):
        self.ckpt = ckpt
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.vision_fn, self.projector_fn = vision, projector
        self.attention = None  # LLaMA-VID: frame tokens from tower features and the question
        if vision is None:
            tower, projector = load_vision(ckpt, self.dtype, projector_order)
            self.vision, self.projector = tower.to(self.device), projector.to(self.device)
        if ckpt.llamavid is not None and self.projector_fn is None:
            projector = self.projector if vision is None else _load_projector(ckpt, projector_order, self.dtype)
            self.attention = load_attention(ckpt, projector, self.dtype).to(self.device)
        self.tokenizer = load_tokenizer(ckpt)
        if is_awq(ckpt.llm_config):  # the reference runs int4 checkpoints on their dequantised weights
            self.llm = load_awq_llm(ckpt.llm_dir, self.dtype, ckpt.weights["llm"]).to(self.device)
        else:
            self.llm = load_llm(ckpt, self.dtype).to(self.device)
        end_text = ckpt.family.image_end_text
        self.image_end_ids = self.tokenizer(end_text, add_special_tokens=False).input_ids if end_text else []
        self.cache = None

    @property
    def info(self) -> Checkpoint:
        """What the captioning front reads (backend.ModelInfo): the checkpoint itself."""
        return self.ckpt

    @property
    def vocab_size(self) -> int:
        return self.llm.config.vocab_size

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray, question_ids: np.ndarray | None = None) -> torch.Tensor:
        """pixels [N, 3, S, S] float32 -> image embeddings [N, T, H] in the projector's token order; a
        question-conditioned family (LLaMA-VID) reads the question's Q-Former ids too."""
        if self.ckpt.family.question_conditioned:
            return torch.from_numpy(self.frame_tokens(self.tower_features(pixels), question_ids)).to(self.device, self.dtype)
        if self.vision_fn is not None:
            return torch.from_numpy(self.vision_fn(pixels)).to(self.device, self.dtype)
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)
        return self.projector(self.vision(x))

    @torch.inference_mode()
    def tower_features(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [n, 3, t, t] -> the selected tower features [n, P, C], float32."""
        if self.vision_fn is not None:
            return self.vision_fn(pixels)
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)
        return self.vision(x).float().cpu().numpy()

    @torch.inference_mode()
    def frame_tokens(self, features: np.ndarray, question_ids: np.ndarray) -> np.ndarray:
        """LLaMA-VID: tower features [n, P, C] and the question's Q-Former ids [L] -> LLM tokens [n, T, H], float32."""
        if self.projector_fn is not None:
            return self.projector_fn(features, question_ids)
        x = torch.from_numpy(np.ascontiguousarray(features)).to(self.device, self.dtype)
        ids = torch.from_numpy(np.asarray(question_ids, dtype=np.int64)).to(self.device)[None]
        return self.attention(x, ids).float().cpu().numpy()

    @torch.inference_mode()
    def project(self, features: np.ndarray) -> np.ndarray:
        """[m, P, C·scales] -> image tokens [m, T, H], float32."""
        return self.projector(torch.from_numpy(features).to(self.device, self.dtype)).float().cpu().numpy()

    def encode_multiscale(self, layout, images) -> list[torch.Tensor]:
        """S2 / NVILA images (tiling.ImageTiles): tower on the tiles, VILA's multi-scale merge (numpy, float32, as
        VILA merges in float32), the projector; one [T, H] block per image."""
        tower, project = self.tower_features, self.project
        if self.vision_fn is not None:
            if self.projector_fn is None:
                raise UnsupportedError(f"{self.ckpt.root}: {layout.mode} images need the tower and the projector ONNX "
                                       "apart; re-quantize with this vila-edge (--vision w8a8), or use --backend torch")
            tower, project = self.vision_fn, self.projector_fn
        blocks = encode_multiscale(layout, images, tower, project)
        return [torch.from_numpy(b).to(self.device, self.dtype) for b in blocks]

    @torch.inference_mode()
    def embed(self, ids: list[int]) -> torch.Tensor:
        """token ids -> [T, H]"""
        table = self.llm.get_input_embeddings()
        return table(torch.tensor(ids, dtype=torch.long, device=self.device))

    @torch.inference_mode()
    def splice(self, ids: list[int], image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Prompt ids with IMAGE_TOKEN_INDEX markers + [N, T, H] image blocks -> inputs_embeds [L, H]."""
        parts = splice_parts(ids, image_embeds, self.embed, self.image_end_ids)
        return torch.cat([torch.as_tensor(p).to(self.device, self.dtype) for p in parts])

    # ---- the LLM backend interface shared with the C++ and TensorRT backends ----

    def reset(self) -> None:
        self.cache = DynamicCache()

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor) -> np.ndarray:
        """embeds [L, H] appended to the KV cache -> logits of the last position [V] float32."""
        if self.cache is None:
            self.reset()
        out = self.llm(inputs_embeds=embeds[None], past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float().cpu().numpy()

    @torch.inference_mode()
    def decode(self, token_id: int) -> np.ndarray:
        """one token appended to the KV cache -> logits [V] float32."""
        ids = torch.tensor([[token_id]], device=self.device)
        out = self.llm(input_ids=ids, past_key_values=self.cache, use_cache=True)
        return out.logits[0, -1].float().cpu().numpy()

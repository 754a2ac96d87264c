"""An independent LLaVA-1.5 reference for the tests, written from haotian-liu/LLaVA (c121f04) with plain torch and
transformers' CLIPVisionModel / LlamaForCausalLM / CLIPImageProcessor; nothing of vila_edge:

- llava/mm_utils.py: expand2square, process_images (`pad`, else the image processor alone), tokenizer_image_token
- llava/model/multimodal_encoder/clip_encoder.py: CLIPVisionTower.forward / feature_select
  (hidden_states[select_layer], `patch` drops the CLS token)
- llava/model/multimodal_projector/builder.py: build_vision_projector, mlp2x_gelu = Linear, GELU, Linear
- llava/model/llava_arch.py: encode_images, prepare_inputs_labels_for_multimodal (text embeddings around the image
  features, at each IMAGE_TOKEN_INDEX)
- llava/conversation.py: conv_vicuna_v1 (SeparatorStyle.TWO) get_prompt for one user turn
- llava/model/builder.py: load_pretrained_model (the LLM and projector from the shards, the tower from
  mm_vision_tower; a fine-tune's own tower from the shards)

A llava-hf folder is loaded by transformers' own LlavaForConditionalGeneration (both key namings), its projector and
tower taken from there; its hub chat template is rendered with jinja2.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

IMAGE_TOKEN_INDEX = -200
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def expand2square(pil_img: Image.Image, background_color) -> Image.Image:
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return result


def process_images(images: list[Image.Image], processor: CLIPImageProcessor, aspect: str | None) -> torch.Tensor:
    if aspect == "pad":
        background = tuple(int(x * 255) for x in processor.image_mean)
        return torch.stack([processor.preprocess(expand2square(im, background), return_tensors="pt")["pixel_values"][0]
                            for im in images])
    return processor(images, return_tensors="pt")["pixel_values"]


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    separator = [IMAGE_TOKEN_INDEX] * (offset + 1)  # insert_separator: chunk, sep, chunk, ...; each cut by offset
    pieces = [p for chunk in chunks for p in (chunk, separator)][:-1]
    for piece in pieces:
        ids.extend(piece[offset:])
    return ids


def vicuna_v1_prompt(question: str) -> str:
    """conv_vicuna_v1 with (USER, question), (ASSISTANT, None): system + sep, role + ": " + message + sep, role + ":"."""
    return VICUNA_SYSTEM + " " + "USER: " + question + " " + "ASSISTANT:"


def llava_hf_prompt(root: Path, question: str, n_images: int) -> str:
    """llava-hf's chat_template.json rendered for one user turn of n images and the question."""
    template = json.loads((root / "chat_template.json").read_text())["chat_template"]
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
    env.add_extension(_Generation)
    return env.from_string(template).render(messages=[{"role": "user", "content": content}], add_generation_prompt=True)


class _Generation(jinja2.ext.Extension):
    """transformers' {% generation %} block (it marks assistant text; it renders its body unchanged)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


class LlavaReference:
    """tower + feature_select + projector + LLM; `llm(inputs_embeds / input_ids, past_key_values)` -> logits."""

    def __init__(self, tower, select_layer, select_feature, projector, llm, embed, tokenizer, processor, aspect):
        self.tower, self.select_layer, self.select_feature = tower, select_layer, select_feature
        self.projector, self.llm, self.embed = projector, llm, embed
        self.tokenizer, self.processor, self.aspect = tokenizer, processor, aspect

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return process_images(images, self.processor, self.aspect)

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(pixels, output_hidden_states=True).hidden_states[self.select_layer]
        return hidden[:, 1:] if self.select_feature == "patch" else hidden

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projector(self.features(pixels))

    @torch.no_grad()
    def prepare_inputs(self, ids: list[int], image_features: torch.Tensor) -> torch.Tensor:
        """prepare_inputs_labels_for_multimodal for one sequence: [L, H] with each image's features spliced in."""
        marks = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
        bounds = [-1, *marks, len(ids)]
        pieces = []
        for i in range(len(bounds) - 1):
            text = ids[bounds[i] + 1: bounds[i + 1]]
            pieces.append(self.embed(torch.tensor(text, dtype=torch.long)))
            if i < len(marks):
                pieces.append(image_features[i])
        return torch.cat(pieces)

    @torch.no_grad()
    def greedy(self, embeds: torch.Tensor, max_new_tokens: int) -> list[int]:
        out = self.llm(inputs_embeds=embeds[None], use_cache=True)
        tokens = []
        for _ in range(max_new_tokens):
            token = int(out.logits[0, -1].argmax())
            if token == self.tokenizer.eos_token_id:
                break
            tokens.append(token)
            out = self.llm(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
        return tokens

    def answer(self, images: list[Image.Image], prompt: str, max_new_tokens: int) -> tuple[list[int], int]:
        """(greedy tokens, prompt length in positions) for a full prompt text with <image> marks."""
        embeds = self.prepare_inputs(tokenizer_image_token(prompt, self.tokenizer), self.encode_images(self.pixels(images)))
        return self.greedy(embeds, max_new_tokens), len(embeds)


def _load_shards(root: Path) -> dict[str, torch.Tensor]:
    index = json.loads((root / "pytorch_model.bin.index.json").read_text())["weight_map"]
    state = {}
    for file in sorted(set(index.values())):
        state.update(torch.load(root / file, map_location="cpu", weights_only=True))
    return {k: v.float() for k, v in state.items()}


def load_original(root: Path, tower_dir: Path) -> LlavaReference:
    """load_pretrained_model for liuhaotian/llava-v1.5-*: LlavaLlamaForCausalLM is LlamaForCausalLM plus the tower and
    the projector, so the LLM is a LlamaForCausalLM of the flat config holding every other tensor of the shards."""
    config = json.loads((root / "config.json").read_text())
    state = _load_shards(root)
    llm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}))
    extra = ("model.mm_projector.", "model.vision_tower.")
    llm_state = {k: v for k, v in state.items() if not k.startswith(extra) and not k.endswith("rotary_emb.inv_freq")}
    llm.load_state_dict(llm_state, strict=True)
    projector = torch.nn.Sequential(torch.nn.Linear(config["mm_hidden_size"], config["hidden_size"]), torch.nn.GELU(),
                                    torch.nn.Linear(config["hidden_size"], config["hidden_size"]))
    projector.load_state_dict({k[len("model.mm_projector."):]: v for k, v in state.items()
                               if k.startswith("model.mm_projector.")})
    tower = CLIPVisionModel.from_pretrained(tower_dir, dtype=torch.float32)
    tuned = {k[len("model.vision_tower.vision_tower."):]: v for k, v in state.items()
             if k.startswith("model.vision_tower.vision_tower.")}
    if tuned:  # unfreeze_mm_vision_tower: the fine-tune's tower weights come with the model's
        tower = CLIPVisionModel.from_pretrained(None, config=tower.config, state_dict=tuned, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(root, use_fast=False)
    return LlavaReference(tower.eval(), config["mm_vision_select_layer"], config["mm_vision_select_feature"],
                          projector.eval(), llm.eval(), llm.get_input_embeddings(), tokenizer,
                          CLIPImageProcessor.from_pretrained(tower_dir), config.get("image_aspect_ratio"))


def load_llava_hf(root: Path, hub_processor: bool = False) -> LlavaReference:
    """transformers' LlavaForConditionalGeneration on the folder; LLaVA-1.5's `pad` unless hub_processor."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(root, dtype=torch.float32).eval()
    config = json.loads((root / "config.json").read_text())
    feature = "patch" if config.get("vision_feature_select_strategy", "default") == "default" else "cls_patch"
    return LlavaReference(model.model.vision_tower, config.get("vision_feature_layer", -2), feature,
                          model.model.multi_modal_projector, model, model.get_input_embeddings(),
                          AutoTokenizer.from_pretrained(root), CLIPImageProcessor.from_pretrained(root),
                          None if hub_processor else "pad")

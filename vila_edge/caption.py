"""One question about images (or video frames) in, one answer out: prompt, vision, splice, generate."""

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from .backend import Backend, ModelInfo
from .conversation import get_template, render, resolve_conv_mode, stop_strings
from .errors import UsageError
from .generate import SamplingParams, TextStream, generate
from .media import preprocess
from .prompt import tokenize_prompt, user_turn


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    prompt_tokens: int  # everything prefilled: text tokens and image tokens
    image_tokens: int
    stop_reason: str
    vision_s: float
    ttft_s: float  # from the question to the first sampled token, vision included
    decode_tok_s: float


class Captioner:
    """Holds a loaded model; answers questions with the checkpoint's conversation template."""

    def __init__(self, ckpt: ModelInfo, model: Backend, conv_mode: str | None = None):
        self.ckpt, self.model = ckpt, model
        self.tokenizer = model.tokenizer
        self.conv_mode, self.conv_mode_source = resolve_conv_mode(ckpt, conv_mode, self.tokenizer)
        self.template = get_template(self.conv_mode)

    def prompt_ids(self, question: str, n_images: int) -> list[int]:
        turn = user_turn(question, n_images, self.ckpt.family.image_text)
        return tokenize_prompt(self.tokenizer, render(self.template, turn, self.tokenizer))

    def pixels(self, images: list[Image.Image]) -> np.ndarray:
        """[N, 3, S, S] float32, preprocessed as the checkpoint's processor does."""
        return np.stack([preprocess(im, self.ckpt.preprocessor, self.ckpt.image_aspect_ratio) for im in images])

    def __call__(self, images: list[Image.Image], question: str, params: SamplingParams,
                 on_text: Callable[[str], None] | None = None) -> Answer:
        t0 = time.perf_counter()
        ids = self.prompt_ids(question, len(images))
        image_embeds = None
        if images:
            image_embeds = self.model.encode_images(self.pixels(images))
        vision_s = time.perf_counter() - t0
        inputs = self.model.splice(ids, image_embeds)
        max_length = self.ckpt.model_max_length
        if len(inputs) >= max_length:
            raise UsageError(
                f"the prompt is {len(inputs)} tokens with its images; {self.ckpt.name} takes at most {max_length}. "
                "Use fewer images or frames (--num-frames) or a shorter prompt"
            )
        stream = TextStream(self.tokenizer, stop_strings(self.template, self.tokenizer))
        gen = generate(self.model, inputs, len(inputs), stream, params, max_length, on_text)
        image_tokens = 0 if image_embeds is None else image_embeds.shape[0] * image_embeds.shape[1]
        return Answer(
            text=gen.text,
            token_ids=gen.token_ids,
            prompt_tokens=gen.prompt_tokens,
            image_tokens=image_tokens,
            stop_reason=gen.stop_reason,
            vision_s=vision_s,
            ttft_s=gen.first_token_at - t0,
            decode_tok_s=gen.decode_tok_s,
        )

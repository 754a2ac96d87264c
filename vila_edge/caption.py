"""One question about images (or video frames) in, one answer out: prompt, vision, splice, generate."""

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from .backend import Backend, ModelInfo
from .conversation import get_template, render_conversation, resolve_conv_mode, stop_strings
from .errors import UsageError
from .generate import SamplingParams, TextStream, generate
from .media import layout_preprocess
from .prompt import tokenize_prompt, user_turn
from .question import QuestionTokenizer
from .tiling import ImageTiles, image_tiles

FRAME_BATCH = 64  # frames per Q-Former call (upstream's long-video block_size)


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    prompt_tokens: int  # everything prefilled: text tokens and image tokens
    image_tokens: int
    completion_tokens: int  # sampled, a stop token included
    stop_reason: str
    vision_s: float
    ttft_s: float  # from the question to the first sampled token, vision included
    decode_tok_s: float


@dataclass
class VideoClip:
    """A video as LLaMA-VID takes it, all in one image place of the prompt: its sampled frames' tower features
    [F, P, C] (from the feature cache), or the frames themselves (a served video: the tower runs on them here)."""

    features: np.ndarray | None = None
    timestamps: list[float] | None = None
    frames: list | None = None

    def __len__(self) -> int:
        return len(self.features) if self.features is not None else len(self.frames)


@dataclass
class Encoded:
    """A prompt's images encoded: the image blocks in prompt order, and how the prompt places them."""

    blocks: object  # the backend's [N, T, H] blocks, or a list of [T, H] ones of different T; None without images
    tiles: list[ImageTiles]

    @property
    def tiles_per_image(self) -> list[int]:
        """Per image, the `<image>` places it takes when tiled (NVILA-Lite), else 0: one plain placeholder."""
        return [t.blocks if t.kind == "tiles" else 0 for t in self.tiles]

    @property
    def tower_passes(self) -> int:
        return sum(len(t.pixels) for t in self.tiles)


def joined(parts: list[Encoded]) -> Encoded:
    """Several images' Encoded as one prompt's: their blocks as a list of [T, H] blocks, in order."""
    if not parts:
        return Encoded(None, [])
    return Encoded([block for e in parts for block in e.blocks], [t for e in parts for t in e.tiles])


class EncodedImages:
    """The last `size` images encoded, by identity (each entry holds its image, so an id is not reused while the entry
    lives): a live --window K caption encodes each frame once while it stays in the window."""

    def __init__(self, size: int):
        self.size, self.entries = size, OrderedDict()

    def get(self, image, question: str, encode) -> Encoded:
        key = (id(image), question)
        if key not in self.entries:
            self.entries[key] = (image, encode())
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return self.entries[key][1]


class Captioner:
    """Holds a loaded model; answers questions with the checkpoint's conversation template.
    `max_tiles` caps NVILA's tiles per image (VILA's max_tiles; 1: one tile)."""

    def __init__(self, ckpt: ModelInfo, model: Backend, conv_mode: str | None = None, max_tiles: int | None = None):
        self.ckpt, self.model = ckpt, model
        self.tokenizer = model.tokenizer
        self.conv_mode, self.conv_mode_source = resolve_conv_mode(ckpt, conv_mode, self.tokenizer)
        self.template = get_template(self.conv_mode)
        self.layout = ckpt.vision_layout.with_max_tiles(max_tiles)
        self.conditioned = ckpt.family.question_conditioned
        self.encoded_images: EncodedImages | None = None  # keep_encoded(): each image encoded alone, kept a while
        self.question_tokenizer = QuestionTokenizer(ckpt.question_tokenizer_dir) if self.conditioned else None
        limit = getattr(ckpt, "max_tiles_limit", None)
        if max_tiles is not None and limit is not None and max_tiles > limit:
            raise UsageError(f"--max-tiles {max_tiles}: {ckpt.root} was built for at most {limit} tiles per image; "
                             f"pass --max-tiles {limit} or less, or rebuild it with build-engine --max-tiles {max_tiles}")

    def prompt_ids(self, question: str, n_images: int, tiles: list[int] | None = None) -> list[int]:
        return self.conversation_ids(None, [("user", question)], [n_images], tiles)

    def conversation_ids(self, system: str | None, turns: list[tuple[str, str]], images_per_turn: list[int],
                         tiles: list[int] | None = None) -> list[int]:
        """A conversation's prompt ids: each user turn takes its images' placeholders (`images_per_turn`, one count
        per turn, in order; `tiles` per image as Encoded.tiles_per_image gives them)."""
        tiles = tiles or [0] * sum(images_per_turn)
        placed, start = [], 0
        for (role, text), n in zip(turns, images_per_turn):
            if role == "user":
                text = user_turn(text, n, self.ckpt.family.image_text, tiles[start : start + n])
            placed.append((role, text))
            start += n
        prompt = render_conversation(self.template, system, placed, self.tokenizer)
        return tokenize_prompt(self.tokenizer, prompt)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One image as the tower takes it (the checkpoint's processor and aspect ratio), [3, S, S] float32."""
        return layout_preprocess(image, self.ckpt.preprocessor, self.ckpt.image_aspect_ratio, self.layout)

    def keep_encoded(self, images: int) -> None:
        """From now on encode each image alone and keep the last `images` encoded (live captioning's window)."""
        self.encoded_images = EncodedImages(images)

    def encode(self, images: list, question: str = "") -> Encoded:
        """The images as the checkpoint's layout has them: tiles through the tower, merged, projected; a
        question-conditioned family (LLaMA-VID) reads the question, and takes VideoClips."""
        if self.encoded_images is not None and len(images) > 0:
            keep = self.encoded_images
            return joined([keep.get(im, question, lambda im=im: self._encode([im], question)) for im in images])
        return self._encode(images, question)

    def _encode(self, images: list, question: str) -> Encoded:
        if self.conditioned:
            return self._encode_conditioned(images, question)
        tiles = image_tiles(self.layout, images, self.preprocess)
        if not tiles:
            return Encoded(None, [])
        if all(t.kind in ("single", "tiles") for t in tiles):  # tower + projector per tile: any backend
            return Encoded(self.model.encode_images(np.concatenate([t.pixels for t in tiles])), tiles)
        return Encoded(self.model.encode_multiscale(self.layout, tiles), tiles)

    def _encode_conditioned(self, media: list, question: str) -> Encoded:
        """LLaMA-VID: per image, [context, content...] from the tower features and the question; a VideoClip's
        frames in one block (prepare_inputs_labels_for_multimodal puts the whole video at one <image>)."""
        if not media:
            return Encoded(None, [])
        ids = self.question_tokenizer(question)
        blocks = []
        for item in media:
            if isinstance(item, VideoClip) and item.features is not None:
                features = item.features
            else:
                frames = item.frames if isinstance(item, VideoClip) else [item]
                features = np.concatenate([self.model.tower_features(np.stack([self.preprocess(f) for f in
                                                                               frames[i : i + 8]]))
                                           for i in range(0, len(frames), 8)])
            tokens = [self.model.frame_tokens(np.asarray(features[i : i + FRAME_BATCH], dtype=np.float32), ids)
                      for i in range(0, len(features), FRAME_BATCH)]
            blocks.append(np.concatenate(tokens).reshape(-1, tokens[0].shape[-1]))
        return Encoded(blocks, [])

    def __call__(self, images: list[Image.Image], question: str, params: SamplingParams,
                 on_text: Callable[[str], None] | None = None) -> Answer:
        return self.chat(None, [("user", question)], [len(images)], images, params, on_text)

    def chat(self, system: str | None, turns: list[tuple[str, str]], images_per_turn: list[int],
             images: list[Image.Image], params: SamplingParams, on_text: Callable[[str], None] | None = None,
             stop: tuple[str, ...] = ()) -> Answer:
        """Answer a conversation (see conversation_ids) whose images are `images`, in turn order; `stop`: more stop
        strings than the template's."""
        t0 = time.perf_counter()
        encoded = self.encode(images, next((text for role, text in reversed(turns) if role == "user"), ""))
        ids = self.conversation_ids(system, turns, images_per_turn, encoded.tiles_per_image)
        image_embeds = encoded.blocks
        vision_s = time.perf_counter() - t0
        inputs = self.model.splice(ids, image_embeds)
        max_length = self.ckpt.model_max_length
        if len(inputs) >= max_length:
            raise UsageError(
                f"the prompt is {len(inputs)} tokens with its images; {self.ckpt.name} takes at most {max_length}. "
                "Use fewer images or frames (--num-frames) or a shorter prompt"
            )
        stream = TextStream(self.tokenizer, stop_strings(self.template, self.tokenizer) + tuple(stop))
        gen = generate(self.model, inputs, len(inputs), stream, params, max_length, on_text)
        image_tokens = 0 if image_embeds is None else sum(len(b) for b in image_embeds)
        return Answer(
            text=gen.text,
            token_ids=gen.token_ids,
            prompt_tokens=gen.prompt_tokens,
            image_tokens=image_tokens,
            completion_tokens=gen.n_generated,
            stop_reason=gen.stop_reason,
            vision_s=vision_s,
            ttft_s=gen.first_token_at - t0,
            decode_tok_s=gen.decode_tok_s,
        )

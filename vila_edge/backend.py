"""What every backend offers the captioning front, named: the torch reference (model.vlm.VilaModel),
the C++ cpu engine (runtime.cpu.CpuEngine) and TensorRT (runtime.trt.TrtEngine). Protocols only; no imports
of any backend, so the front stays torch-free."""

from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from .arch import Family


class ModelInfo(Protocol):
    """What the front reads about a model, from a checkpoint (checkpoint.Checkpoint) or an engine's
    manifest (runtime.manifest.EngineInfo)."""

    root: Path
    family: Family

    @property
    def name(self) -> str: ...
    @property
    def preprocessor(self) -> dict: ...  # the image processor's preprocessor_config.json
    @property
    def image_aspect_ratio(self) -> str: ...
    @property
    def vision_layout(self): ...  # tiling.VisionLayout: how images become tower tiles
    @property
    def model_max_length(self) -> int: ...
    @property
    def num_video_frames(self) -> int: ...
    @property
    def tokens_per_image(self) -> int: ...  # LLaMA-VID: per frame
    @property
    def question_tokenizer_dir(self) -> Path | None: ...  # LLaMA-VID's BERT tokenizer (question.py); else None

    def recorded_conv_mode(self) -> tuple[str, str] | None:
        """(conv mode, where it is recorded) when the model names its own template."""

    # A GPU engine's EngineInfo also has max_tiles_limit: the tiles per image it was built for (a checkpoint: none).


class Backend(Protocol):
    """Images and prompt ids in; tokens out through one of LogitsSource (our sampler) or TokenSource (its own)."""

    info: ModelInfo
    tokenizer: object  # a transformers tokenizer or runtime.tokenizer.EngineTokenizer

    def encode_images(self, pixels: np.ndarray, question_ids: np.ndarray | None = None):
        """pixels [N, 3, S, S] float32 -> image embeddings [N, T, H] in the projector's token order. A
        question-conditioned family (LLaMA-VID) also takes the question's Q-Former ids [L] (question.py)."""

    def tower_features(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [N, 3, S, S] -> the tower's features [N, P, C] float32 (what LLaMA-VID's feature cache keeps)."""

    def frame_tokens(self, features: np.ndarray, question_ids: np.ndarray) -> np.ndarray:
        """LLaMA-VID: tower features [N, P, C] + the question's ids [L] -> LLM tokens [N, T, H] float32, per frame
        [context, content...] (the Q-Former, token generation and mm_projector)."""

    def splice(self, ids: list[int], image_embeds):
        """Prompt ids with IMAGE_TOKEN_INDEX markers + [N, T, H] image blocks -> the backend's prefill input."""

    def encode_multiscale(self, layout, images) -> list:
        """S2 / NVILA images (tiling.ImageTiles) -> a [T, H] block per image: the tower on the tiles, the scales merged,
        the projector (tiling.encode_multiscale), so the tower and the projector run apart."""


@runtime_checkable
class LogitsSource(Protocol):
    """A backend whose logits our sampler reads (torch, cpu): the KV cache lives inside it."""

    def reset(self) -> None:
        """Empty the KV cache."""

    def prefill(self, inputs) -> np.ndarray:
        """inputs [L, H] appended to the cache -> logits of the last position [V] float32."""

    def decode(self, token_id: int) -> np.ndarray:
        """one token appended to the cache -> logits [V] float32."""


@runtime_checkable
class TokenSource(Protocol):
    """A backend that samples on its own (TensorRT-LLM); the front still applies its stop rules."""

    def generate_tokens(self, inputs, params) -> Iterator[int]:
        """The sampled tokens, one at a time, until the caller stops reading or max_new_tokens."""

"""LLaMA-VID on a long video: the frames sampled at a rate (video.sample_plan, as upstream's load_video), the tower's
features cached on disk by content (feature_cache: a second question about the same hour re-runs only the Q-Former and
the LLM), the whole video one VideoClip for the Captioner; a video the context cannot hold is refused before any
frame is decoded, with the largest --fps / --max-frames that fits."""

import math
from dataclasses import dataclass

from ..caption import Captioner, VideoClip
from ..errors import UsageError
from ..feature_cache import open_feature_cache, video_digest
from ..formats import VISION_DIR, VISION_FILES, cpu_vision
from ..video import VideoPlan, sample_plan


@dataclass(frozen=True)
class VideoOptions:
    """How caption --video samples a video for a question-conditioned model (LLaMA-VID); the rate is --fps."""

    max_frames: int | None = None
    start: float | None = None  # seconds
    end: float | None = None
    feature_cache: str | None = None  # DIR (default: $VILA_EDGE_CACHE/features or ~/.cache/vila-edge/features)
    no_feature_cache: bool = False

    def given(self) -> list[str]:
        return [f"--{k.replace('_', '-')}" for k, v in vars(self).items() if v not in (None, False)]


def check_fits(plan: VideoPlan, fps: float, captioner: Captioner, question: str, max_new_tokens: int) -> None:
    """The prompt, every frame's tokens and the answer within the model's context, else the largest rate that fits."""
    info = captioner.ckpt
    per_frame, limit = info.tokens_per_image, info.model_max_length
    text = len(captioner.prompt_ids(question, 1)) - 1
    need = text + len(plan) * per_frame + max_new_tokens
    if need <= limit:
        return
    frames = max(0, (limit - text - max_new_tokens) // per_frame)
    span = (plan.timestamps_s[-1] - plan.timestamps_s[0]) if len(plan) > 1 else plan.duration_s
    rate = math.floor(100 * frames / span) / 100 if span > 0 else 0
    raise UsageError(
        f"{plan.path}: {len(plan)} frames at --fps {fps:g} are {len(plan) * per_frame} image tokens ({per_frame} per "
        f"frame); with the prompt and --max-new-tokens {max_new_tokens} that is {need} of the {limit} {info.name} "
        f"holds: pass --fps {rate:g} or less, or --max-frames {frames} (or --start/--end for a part)")


def tower_identity(engine, backend: str) -> dict:
    """What the cached features depend on besides the video: the tower's weights (by content) and how they run."""
    info = engine.info
    manifest = getattr(engine, "manifest", None)
    if manifest is not None:  # an engine folder: its tower graph
        file = info.root / manifest["vision"]["file"]
    elif backend == "onnx":
        file = info.root / VISION_DIR / VISION_FILES[cpu_vision(info.root / VISION_DIR)]
    else:
        file = info.weights["vision_tower"][0]
    dtype = str(getattr(engine, "dtype", "float32"))
    return {"tower_sha256": video_digest(file), "tower_file": file.name, "backend": backend.split()[0], "dtype": dtype,
            "preprocessor": info.preprocessor}


def video_clip(captioner: Captioner, backend: str, path: str, fps: float | None, opts: VideoOptions, question: str,
               max_new_tokens: int, progress: bool = True) -> VideoClip:
    """The video's frames through the tower (or from the cache) as one VideoClip."""
    fps = 1.0 if fps is None else fps
    plan = sample_plan(path, fps, opts.max_frames, opts.start, opts.end)
    check_fits(plan, fps, captioner, question, max_new_tokens)
    engine = captioner.model
    cache = open_feature_cache(opts.feature_cache, enabled=not opts.no_feature_cache)
    features = cache.features(plan, tower_identity(engine, backend), engine.tower_features, captioner.preprocess,
                              progress=progress)
    return VideoClip(features, list(plan.timestamps_s))

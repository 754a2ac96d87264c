"""`vila-edge caption`: one answer about images or a video, or a caption per sampled frame of a --source."""

import json
import re
import sys
import time
from contextlib import closing
from typing import Callable, Iterator

from ..caption import Answer, Captioner
from ..capture import CaptureOptions, caption_frames, open_source
from ..errors import UsageError
from ..generate import SamplingParams
from ..media import load_image, load_video_frames
from ..record import Recorder
from .backends import BackendOptions, load_backend
from .long_video import VideoOptions, video_clip


def answer_record(answer: Answer, source: str, prompt: str, images: int, captioner: Captioner, backend: str) -> dict:
    return {
        "source": source,
        "prompt": prompt,
        "text": answer.text,
        "token_ids": answer.token_ids,
        "prompt_tokens": answer.prompt_tokens,
        "image_tokens": answer.image_tokens,
        "images": images,
        "stop_reason": answer.stop_reason,
        "vision_s": round(answer.vision_s, 4),
        "ttft_s": round(answer.ttft_s, 4),
        "decode_tok_s": round(answer.decode_tok_s, 2),
        "conv_mode": captioner.conv_mode,
        "backend": backend,
    }


def caption_media(model: str, image_paths: list[str] | None, video: str | None, num_frames: int | None, prompt: str,
                  params: SamplingParams, backend: BackendOptions, conv_mode: str | None, capture: CaptureOptions,
                  on_text: Callable[[str], None] | None = None, video_opts: VideoOptions = VideoOptions()
                  ) -> tuple[dict, str]:
    """(the jsonl record of one answer, the stats line text mode prints after it). A question-conditioned model
    (LLaMA-VID) takes a --video at --fps (default 1) as one clip, its tower features cached (long_video.py)."""
    given = [g for g in capture.given() if not (video and g == "--fps")]
    if given:
        raise UsageError(f"{', '.join(given)}: these sample a --source; with --image or --video drop them")
    engine, name = load_backend(model, backend)
    captioner = Captioner(engine.info, engine, conv_mode, backend.max_tiles)
    rated = bool(video) and engine.info.family.question_conditioned
    _check_video_options(engine.info.name, rated, num_frames, capture.fps if video else None, video_opts)
    features_s = None
    if rated:
        t0 = time.perf_counter()
        clip = video_clip(captioner, name, video, capture.fps, video_opts, prompt, params.max_new_tokens)
        images, source, count = [clip], video, len(clip.features)
        features_s = time.perf_counter() - t0
    elif video:
        images, source = load_video_frames(video, num_frames or engine.info.num_video_frames), video
        count = len(images)
    else:
        images, source = [load_image(p) for p in image_paths or []], ",".join(image_paths or [])
        count = len(images)
    answer = captioner(images, prompt, params, on_text=on_text)
    stats = (f"[{answer.prompt_tokens} prompt tokens ({answer.image_tokens} image), {len(answer.token_ids)} new, "
             f"TTFT {answer.ttft_s:.2f} s, decode {answer.decode_tok_s:.1f} tok/s, conv mode {captioner.conv_mode}]")
    record = answer_record(answer, source, prompt, count, captioner, name)
    if features_s is not None:  # before the question: the frames sampled and the tower run, or read from the cache
        record["video_features_s"] = round(features_s, 4)
        stats = stats[:-1] + f", {count} frames' features in {features_s:.2f} s before it]"
    return record, stats


def _check_video_options(model: str, rated: bool, num_frames: int | None, fps: float | None, opts: VideoOptions) -> None:
    """--num-frames picks VILA's frames; --fps, --max-frames, --start, --end and the cache sample LLaMA-VID's."""
    if rated and num_frames is not None:
        raise UsageError(f"--num-frames: {model} samples a video at --fps (default 1, as LLaMA-VID); cap the frames "
                         "with --max-frames instead")
    given = opts.given() + (["--fps"] if fps is not None else [])
    if not rated and given:
        raise UsageError(f"{', '.join(given)}: these sample a --video for LLaMA-VID; {model} takes --num-frames "
                         "frames of a --video")


def compile_alert(pattern: str | None) -> re.Pattern | None:
    try:
        return re.compile(pattern, re.IGNORECASE) if pattern is not None else None
    except re.error as e:
        raise UsageError(f"--alert {pattern!r}: not a regular expression ({e})") from None


def caption_source(model: str, spec: str, prompt: str, params: SamplingParams, backend: BackendOptions,
                   conv_mode: str | None, capture: CaptureOptions, log: Callable[[str], None]) -> Iterator[dict]:
    """A record per sampled frame of a camera, stream, video file or image folder, until the source ends,
    --max-captions, or the caller stops (Ctrl-C); the source and the recording are closed either way."""
    if capture.every != 1 and capture.fps is not None:
        raise UsageError("--every and --fps both choose the frames; give one")
    alert = compile_alert(capture.alert)
    # a missing file, a camera that cannot be opened or an unreachable stream fails before the model loads
    source = open_source(spec, capture.every, capture.fps, capture.realtime, capture.reconnect_timeout, log)
    recorder, captions = None, 0
    try:
        if capture.record:
            recorder = Recorder(capture.record, source.fps, alerts=alert is not None)
            source.tap = recorder.write
        engine, _ = load_backend(model, backend)
        captioner = Captioner(engine.info, engine, conv_mode, backend.max_tiles)
        loop = caption_frames(captioner, source, prompt, params, capture.window, capture.max_captions, alert, recorder)
        with closing(loop):
            for captions, record in enumerate(loop, start=1):
                yield record
    finally:
        source.close()
        if source.live and captions:
            log(f"{captions} caption{'s' if captions != 1 else ''}; {source.dropped} sampled frame(s) dropped "
                "while the model was busy" + (f"; {source.reconnects} reconnect(s)" if source.reconnects else ""))
        if recorder:
            recorder.close()
            log(f"recorded {recorder.path}" + (f" and {recorder.clips} alert clip(s)" if recorder.clips else ""))


def print_record(record: dict, fmt: str) -> None:
    if fmt == "jsonl":
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    flag = f"ALERT ({record['alert']}) " if "alert" in record else ""
    print(f"[frame {record['frame_index']} @ {record['timestamp']:.2f} s] {flag}{record['text']}", flush=True)


def stderr_log(message: str) -> None:
    print(f"vila-edge caption: {message}", file=sys.stderr, flush=True)

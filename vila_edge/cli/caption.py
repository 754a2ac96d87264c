"""`vila-edge caption MODEL`: answer a question about images or a video, or caption a camera, stream or file."""

import json
import sys

from ..capture import CaptureOptions
from ..commands.backends import BACKENDS, BackendOptions
from ..commands.caption import caption_media, caption_source, print_record, stderr_log
from ..commands.long_video import VideoOptions
from ..formats import VISION_BACKENDS
from ..generate import SamplingParams
from ..runtime.cpu import KV_CACHE_BYTES
from .options import add_allow_pickle, add_conv_mode, add_device, add_fields, add_format, add_llava_options, from_args

SAMPLING = ("max_new_tokens", "temperature", "top_p", "seed")
CAPTURE = ("every", "fps", "window", "max_captions", "realtime", "reconnect_timeout", "record", "alert")
CPU_ENGINE = ("threads", "kernels", "max_seq", "activations", "kv_cache", "vision_backend")
TORCH = ("dtype", "projector_order")
LONG_VIDEO = ("max_frames", "start", "end", "feature_cache", "no_feature_cache")


def add_parser(sub) -> None:
    q = sub.add_parser("caption", help="answer a question about images or a video, or caption a live source")
    q.add_argument("model", help="an engine folder (build-engine) or a VILA checkpoint folder")
    media = q.add_mutually_exclusive_group()
    media.add_argument("--image", nargs="+", metavar="PATH", help="one or more images, in prompt order")
    media.add_argument("--video", metavar="PATH", help="one question about N frames of a video (--num-frames)")
    media.add_argument("--source", metavar="SRC", help="a caption per sampled frame of a camera (0, /dev/video0), "
                       "a stream (rtsp://...), a video file or an image folder")
    q.add_argument("--prompt", required=True, help="the question; <image> tags place the images, else they go first")
    add_fields(q, CaptureOptions, *CAPTURE, record={"metavar": "OUT.mp4"}, alert={"metavar": "REGEX"},
               reconnect_timeout={"metavar": "S"})
    add_conv_mode(q)
    add_fields(q, SamplingParams, *SAMPLING)
    q.add_argument("--num-frames", type=int, help="frames sampled from --video (default: the config's)")
    add_fields(q, VideoOptions, *LONG_VIDEO, max_frames={"metavar": "N"}, start={"metavar": "S"}, end={"metavar": "S"},
               feature_cache={"metavar": "DIR"})
    add_fields(q, BackendOptions, "backend", *CPU_ENGINE, "max_tiles", backend={"choices": BACKENDS},
               activations={"choices": ("int8", "fp32")}, kv_cache={"choices": tuple(KV_CACHE_BYTES)},
               vision_backend={"choices": VISION_BACKENDS})
    add_device(q)
    add_fields(q, BackendOptions, *TORCH, dtype={"choices": ("auto", "float32", "float16", "bfloat16")},
               projector_order={"choices": ("row", "column")})
    add_allow_pickle(q)
    add_llava_options(q)
    add_format(q, "text", "jsonl")
    q.set_defaults(run=run)


def run(args) -> int:
    params = from_args(SamplingParams, args, *SAMPLING)
    backend = from_args(BackendOptions, args, "backend", *CPU_ENGINE, "max_tiles", "device", *TORCH, "allow_pickle",
                        "vision_tower", "hf_processor", "qformer_tokenizer")
    capture = from_args(CaptureOptions, args, *CAPTURE)
    if args.source is not None:
        for record in caption_source(args.model, args.source, args.prompt, params, backend, args.conv_mode, capture,
                                     stderr_log):
            print_record(record, args.format)
        return 0
    text = args.format == "text"
    record, stats = caption_media(args.model, args.image, args.video, args.num_frames, args.prompt, params, backend,
                                  args.conv_mode, capture, on_text=Streamer() if text else None,
                                  video_opts=from_args(VideoOptions, args, *LONG_VIDEO))
    if text:
        print()
        print(stats, file=sys.stderr)
    else:
        print(json.dumps(record, ensure_ascii=False), flush=True)
    return 0


class Streamer:
    """Prints the answer as it arrives, without the leading space a detokenizer gives the first word."""

    def __init__(self):
        self.started = False

    def __call__(self, delta: str) -> None:
        if not self.started:
            delta = delta.lstrip()
            self.started = bool(delta)
        print(delta, end="", flush=True)

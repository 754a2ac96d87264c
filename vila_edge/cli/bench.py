"""`vila-edge bench ENGINE`: TTFT, vision, prefill and decode speed, and decode's share of the bandwidth ceiling."""

import json
import sys

from ..bench import BenchSettings
from ..commands.backends import BackendOptions, open_engine
from ..errors import UsageError
from ..formats import VISION_BACKENDS
from ..runtime.cpu import KV_CACHE_BYTES
from .options import add_fields, add_format, from_args

SETTINGS = ("prompt_len", "gen_len", "images", "repeat", "warmup", "image_size", "max_tiles")


def add_parser(sub) -> None:
    q = sub.add_parser("bench", help="TTFT, vision, prefill and decode speed of an engine, and decode's share of "
                                     "the memory-bandwidth ceiling")
    q.add_argument("engine", help="an engine folder from build-engine (cpu, or a TensorRT engine on its GPU)")
    add_fields(q, BenchSettings, *SETTINGS, image_size={"metavar": "WxH", "help": "size of the drawn test images"})
    add_fields(q, BackendOptions, "threads", "kernels", "kv_cache", "vision_backend", kernels={"help": "cpu engine: force a "
               "kernel table (see caption --kernels)"}, kv_cache={"choices": tuple(KV_CACHE_BYTES)},
               vision_backend={"choices": VISION_BACKENDS})
    q.add_argument("--bandwidth-gb-s", type=float, metavar="GB_S",
                   help="memory bandwidth for the decode ceiling (default: measured on cpu, the target's peak on GPUs)")
    q.add_argument("-o", "--out", metavar="FILE", help="also write the result JSON here (bench-table reads it)")
    add_format(q, "text", "json")
    q.set_defaults(run=run)


def run(args) -> int:
    from ..atomic import write_text_atomic
    from ..bench import format_text, run_bench

    settings = from_args(BenchSettings, args, *SETTINGS)
    settings.check()
    if args.bandwidth_gb_s is not None and args.bandwidth_gb_s <= 0:
        raise UsageError("give --bandwidth-gb-s above 0 (GB/s), or leave it out to measure it")
    engine, _ = open_engine(args.engine, from_args(BackendOptions, args, "threads", "kernels", "kv_cache",
                                                             "vision_backend"))
    if settings.images and engine.vision is None:
        raise UsageError(f"{args.engine}: built without vision (--vision none); bench it with --images 0")
    result = run_bench(engine, settings, args.bandwidth_gb_s)
    if args.out:
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.format == "json" else format_text(result))
    return 0

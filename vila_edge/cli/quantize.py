"""`vila-edge quantize CHECKPOINT -o OUT`: AWQ int4 of the LLM (scale + clip search, or a VILA1.5-*-AWQ folder's
llm-awq weights imported) and the W8A8 vision ONNX."""

import sys
import warnings

from ..errors import UsageError, require_extra
from ..quant.options import METHODS, AwqSettings, QuantizeOptions, VisionQuantOptions, parse_calib
from .options import (
    add_allow_pickle,
    add_conv_mode,
    add_device,
    add_fields,
    add_llava_options,
    add_overwrite,
    from_args,
    llava_options,
    shown_size,
    size,
)

AWQ = ("group_size", "w_bit", "duo_scaling", "clip")
RUN = ("n_samples", "seqlen", "seed", "eval_text", "eval_tokens", "max_shard_bytes")
VISION = ("alpha", "method", "n_images", "weight_bits", "target_cosine", "min_cosine", "max_float_layers")


def add_parser(sub) -> None:
    q = sub.add_parser("quantize", help="AWQ int4 quantization of the LLM (scale + clip search)")
    q.add_argument("source", help="a VILA checkpoint folder (fp16/bf16), or a VILA1.5-*-AWQ one: its llm-awq int4 "
                                  "weights are imported (repacked, no search; needs --allow-pickle)")
    q.add_argument("-o", "--out", required=True, help="the quantized checkpoint folder to write")
    add_fields(q, AwqSettings, *AWQ)
    q.add_argument("--calib", default="self", metavar="self|text:FILE|media:PATH",
                   help="calibration: the model's own samples (default), a .txt/.jsonl file, or an image, "
                        "image folder or video captioned through the whole VLM")
    q.add_argument("--calib-media", metavar="PATH", help="short for --calib media:PATH")
    add_conv_mode(q, "the template media calibration prompts in, recorded in OUT (default: the checkpoint's own)")
    add_fields(q, QuantizeOptions, *RUN, flags={"max_shard_bytes": "--shard-size"},
               eval_text={"metavar": "FILE"}, max_shard_bytes={"type": size, "shown": shown_size})
    add_device(q, "where each layer is searched")
    q.add_argument("--vision", choices=("w8a8", "none", "fp16"), default="w8a8", metavar="{w8a8,none}",
                   help="w8a8: also write vision/ (SmoothQuant + int8 Q/DQ ONNX); none: write no vision ONNX "
                        "(the tower stays as it is in vision_tower/)")
    add_fields(q, VisionQuantOptions, *VISION, method={"choices": METHODS},
               flags={"alpha": "--smooth-alpha", "method": "--vision-calib-method", "n_images": "--vision-calib-images",
                      "weight_bits": "--vision-weight-bits", "target_cosine": "--vision-target-cosine",
                      "min_cosine": "--vision-min-cosine", "max_float_layers": "--vision-max-float-layers"},
               weight_bits={"choices": (7, 8)}, max_float_layers={"metavar": "N"})
    add_overwrite(q)
    add_allow_pickle(q)
    add_llava_options(q)
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(run=run)


def options(args) -> QuantizeOptions:
    if args.calib_media and args.calib != "self":
        raise UsageError("--calib-media is the short form of --calib media:PATH; pass one of them")
    calib = parse_calib(f"media:{args.calib_media}" if args.calib_media else args.calib)
    if args.vision == "fp16":
        warnings.warn("--vision fp16 is now --vision none (the tower is left as it is); fp16 goes in the next release",
                      FutureWarning, stacklevel=2)
        args.vision = "none"
    vision = None
    if args.vision == "w8a8":
        vision = from_args(VisionQuantOptions, args, *VISION, media=calib.path if calib.kind == "media" else None)
    settings = from_args(AwqSettings, args, *AWQ)
    return from_args(QuantizeOptions, args, *RUN, "device", "conv_mode", settings=settings, calib=calib, vision=vision)


def run(args) -> int:
    require_extra("quantize", "quantize")
    from ..commands.quantize import quantize_checkpoint, summary_lines

    opts = options(args)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    report = quantize_checkpoint(args.source, args.out, opts, overwrite=args.overwrite, log=log,
                                 progress=not args.quiet, allow_pickle=args.allow_pickle, **llava_options(args))
    print("\n".join(summary_lines(report, args.out)))
    for guard in report["guards"]:
        print(f"note: {guard}", file=sys.stderr)
    return 0

"""`vila-edge build-engine QUANTIZED -o OUT --target T`: an engine folder for a laptop CPU or a GPU target."""

import sys

from ..errors import UsageError, require_extra
from ..export.options import VISION_CHOICES, BuildOptions
from ..runtime.manifest import is_engine
from ..targets import TARGETS
from .options import add_conv_mode, add_fields, add_overwrite, from_args

GPU_LIMITS = ("images", "max_batch", "max_input_len", "max_seq_len", "max_tiles", "max_frames")


def add_parser(sub) -> None:
    q = sub.add_parser("build-engine", help="a quantized checkpoint -> an engine folder for a target")
    q.add_argument("quantized", help="the AWQ checkpoint from vila-edge quantize (or, on the device, a GPU target's bundle)")
    q.add_argument("-o", "--out", required=True, help="the engine folder to write")
    q.add_argument("--target", choices=list(TARGETS), required=True,
                   help="cpu: laptops (C++ int4 engine + ONNX vision); the others: TensorRT-LLM + a TensorRT vision plan, "
                        "built on that device (elsewhere: a portable bundle, exit 3)")
    add_fields(q, BuildOptions, "vision", "lm_head", vision={"choices": VISION_CHOICES,
               "help": "cpu: w8a8-dynamic (per-token int8, the default), w8a8 (static per-tensor) or fp32 ONNX; "
                       "GPU: w8a8 (int8 Q/DQ plan, the default) or fp16; none: text only"},
               lm_head={"choices": ("int8", "fp16"), "help": "lm_head precision on the cpu target"})
    add_fields(q, BuildOptions, *GPU_LIMITS, images={"help": "GPU: images per prompt the engine takes (default 1)"},
               max_batch={"help": "GPU: default the target's (1 on Jetson)"},
               max_input_len={"help": "GPU: prompt tokens, images included (default: the target's)"},
               max_seq_len={"help": "GPU: prompt + answer tokens (default: the target's, within the model's)"},
               max_tiles={"help": "GPU, NVILA / NVILA-Lite: tiles per image the engine is sized for (default: the "
                                  "checkpoint's max_tiles; 1: one tile)"},
               max_frames={"help": "GPU, LLaMA-VID: video frames per prompt the engine is sized for (its "
                                   "max_multimodal_len: frames x tokens per frame; default 3600, or what --max-input-len "
                                   "holds)"})
    q.add_argument("--dry-run", action="store_true", help="GPU: print the memory plan and the build steps; write nothing")
    add_conv_mode(q, "conversation template to record (default: the checkpoint's own)")
    add_overwrite(q)
    q.set_defaults(run=run)


def run(args) -> int:
    opts = from_args(BuildOptions, args, "vision", "lm_head", "conv_mode", *GPU_LIMITS)
    if not is_engine(args.quantized):  # a GPU bundle is built on the device, with the torch TensorRT-LLM runs on
        require_extra("quantize", "build-engine from a checkpoint")
    if TARGETS[args.target].is_gpu:
        from ..export.trt_engine import build_gpu_engine

        code, message = build_gpu_engine(args.quantized, args.out, args.target, opts.vision, opts.conv_mode,
                                         opts.limits(), dry_run=args.dry_run, overwrite=args.overwrite)
        print(message, file=sys.stdout if code in (0, 1) else sys.stderr)
        return code
    if args.dry_run or any(v is not None for v in opts.limits().values()):
        raise UsageError("--dry-run, --images and --max-* plan GPU engines; the cpu engine sizes its cache at run time "
                         "(caption --max-seq)")
    from ..export.cpu_engine import build_cpu_engine

    m = build_cpu_engine(args.quantized, args.out, vision=opts.vision, lm_head=opts.lm_head, conv_mode=opts.conv_mode,
                         overwrite=args.overwrite)
    llm, vision = m["llm"], m["vision"]
    print(f"wrote {args.out}: cpu engine, {llm['architecture']} {llm['layers']} layers, int4 g{llm['group_size']} "
          f"({m['memory']['weights_mb']} MB), lm_head {m['quantization']['lm_head']}, "
          f"vision {vision['precision'] if vision else 'none'}, conv mode {m['text']['conv_mode']}")
    return 0

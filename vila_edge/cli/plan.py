"""`vila-edge plan --recipe R --target T`: will a model fit a target? weights, KV cache, vision, activations, runtime."""

import inspect
import json

from ..errors import UsageError
from ..plan import PLAN_PRECISION, format_plan, load_recipe, memory_plan
from ..quant.options import AwqSettings
from ..targets import GPU_TARGETS, get_target
from .options import add_format

IMAGES = inspect.signature(memory_plan).parameters["images"].default


def add_parser(sub) -> None:
    q = sub.add_parser("plan", help="will a model fit a target? weights, KV cache, vision, activations, runtime")
    q.add_argument("--recipe", required=True, help="a recipes/ name (vila1.5-3b, vila1.5-13b, ...) or a .json path")
    q.add_argument("--target", choices=GPU_TARGETS, required=True)
    q.add_argument("--max-seq-len", type=int, help="prompt + answer tokens (default: the target's)")
    q.add_argument("--max-batch", type=int, help="default: the target's (1 on Jetson)")
    q.add_argument("--max-input-len", type=int, help="prompt tokens, images included (default: the target's)")
    q.add_argument("--images", type=int, default=IMAGES, help=f"images per prompt (default: {IMAGES})")
    q.add_argument("--group-size", type=int, default=AwqSettings.group_size,
                   help=f"AWQ group size (default: quantize's, {AwqSettings.group_size})")
    q.add_argument("--max-tiles", type=int, metavar="N", help="NVILA / NVILA-Lite: tiles per image to size for "
                   "(default: the recipe's max_tiles)")
    q.add_argument("--vision", choices=PLAN_PRECISION, default="w8a8",
                   help="the vision plan, as build-engine --vision: w8a8 (int8), fp16, or none (default: w8a8)")
    add_format(q, "text", "json")
    q.set_defaults(run=run)


def run(args) -> int:
    target = get_target(args.target)
    if not target.is_gpu:
        raise UsageError("--target cpu: the cpu engine has no memory plan here; its weights_mb is in the engine's manifest")
    plan = memory_plan(load_recipe(args.recipe), target, args.group_size, args.images if args.vision != "none" else 0,
                       args.max_seq_len, args.max_batch, args.max_input_len, vision_precision=PLAN_PRECISION[args.vision],
                       max_tiles=args.max_tiles)
    print(json.dumps(plan.to_json(), indent=2) if args.format == "json" else format_plan(plan))
    return 0 if plan.fits else 1

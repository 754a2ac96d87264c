"""`vila-edge demo-checkpoint OUT`: the demo checkpoint (real SmolLM2-135M + an untrained SigLIP tower)."""

from ..errors import require_extra


def add_parser(sub) -> None:
    q = sub.add_parser("demo-checkpoint", help="write the demo checkpoint (SmolLM2 + random vision tower)")
    q.add_argument("out")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(run=run)


def run(args) -> int:
    require_extra("quantize", "demo-checkpoint")
    from ..demo import build_demo_checkpoint

    out = build_demo_checkpoint(args.out, seed=args.seed)
    print(f"wrote {out}: SmolLM2-135M-Instruct + a random (untrained) SigLIP tower and mlp_downsample projector")
    return 0

"""`vila-edge`: inspect, convert, demo-checkpoint, caption, quantize, eval-ppl, build-engine, bench, bench-table, plan,
serve.

One module per command (MLC-LLM's cli/): `add_parser(sub)` builds its arguments from the options
dataclasses, `run(args)` calls the command's logic in vila_edge.commands (or the stage it wraps) and
prints. Building the parser imports no torch, so an engine runs without it."""

import argparse
import sys
import warnings

from .. import __version__
from ..errors import VilaEdgeError
from . import (
    bench,
    bench_table,
    build_engine,
    caption,
    convert,
    demo_checkpoint,
    eval_ppl,
    inspect,
    plan,
    quantize,
    serve,
)

COMMANDS = (inspect, convert, demo_checkpoint, caption, quantize, eval_ppl, build_engine, bench, bench_table, plan, serve)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vila-edge", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"vila-edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda msg, *a, **k: f"vila-edge {args.command}: warning: {msg}\n"
    try:
        return args.run(args)
    except VilaEdgeError as e:
        print(f"vila-edge {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"vila-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

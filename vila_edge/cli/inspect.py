"""`vila-edge inspect CHECKPOINT|ENGINE`: validate a checkpoint and show its shapes, projector and conv mode, or show
what an engine folder (or a GPU bundle) was built from and for."""

import json

from ..commands.inspect import inspect_folder
from .options import HELP, add_allow_pickle, add_format, add_llava_options, llava_options


def add_parser(sub) -> None:
    q = sub.add_parser("inspect", help="validate a checkpoint and show its shapes, projector and conv mode; or show "
                                       "an engine's manifest")
    q.add_argument("checkpoint", metavar="CHECKPOINT|ENGINE")
    q.add_argument("--conv-mode", help="show this conv mode instead of the resolved one")
    q.add_argument("--projector-order", choices=("row", "column"), help=HELP["projector_order"])
    q.add_argument("--max-tiles", type=int, metavar="N", help=HELP["max_tiles"])
    add_allow_pickle(q)
    add_llava_options(q)
    add_format(q, "text", "json")
    q.set_defaults(run=run)


def run(args) -> int:
    info, text = inspect_folder(args.checkpoint, args.conv_mode, args.projector_order, args.allow_pickle, args.max_tiles,
                               **llava_options(args))
    print(json.dumps(info, indent=2) if args.format == "json" else text)
    return 0

"""`vila-edge convert HF_FOLDER -o OUT`: an HF-format NVILA conversion (NVILA-8B-hf, NVILA-15B-hf,
NVILA-Lite-*-hf-preview) rewritten in the VILA layout that every other command reads. No torch."""

import json

from ..commands.convert import convert_hf
from .options import add_overwrite


def add_parser(sub) -> None:
    q = sub.add_parser("convert", help="rewrite an HF-format NVILA conversion (model_type nvila / vila) in the VILA "
                                       "layout (llm/, vision_tower/, mm_projector/)")
    q.add_argument("checkpoint", metavar="HF_FOLDER")
    q.add_argument("-o", "--out", required=True, metavar="OUT", help="the VILA-layout folder to write")
    add_overwrite(q)
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=run)


def run(args) -> int:
    r = convert_hf(args.checkpoint, args.out, overwrite=args.overwrite, progress=not args.quiet)
    counts = ", ".join(f"{part}/ {n} tensors" for part, n in r.tensors.items())
    print(f"wrote {r.out}: the VILA layout of {r.src} (model_type {r.model_type}); {counts}, "
          f"{r.bytes / 2**20:.1f} MiB copied")
    if r.defaults:
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in r.defaults.items())
        print(f"defaults (not in {r.src}/config.json; SGLang's, or VILA's where SGLang reads none; recorded in "
              f"config.json vila_edge_convert): {shown}")
    print(f"next: vila-edge inspect {r.out}")
    return 0

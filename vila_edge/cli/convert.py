"""`vila-edge convert FOLDER -o OUT`: an HF-format NVILA conversion (NVILA-8B-hf, NVILA-15B-hf,
NVILA-Lite-*-hf-preview) or a LLaVA-1.5 folder (liuhaotian/llava-v1.5-*, llava-hf/llava-1.5-*-hf) rewritten in the
VILA layout that every other command reads, in safetensors. No torch, but for pickle sources."""

import json

from ..commands.convert import convert_hf
from ..commands.convert_llava import convert_llava, is_llava_folder
from .options import add_allow_pickle, add_llava_options, add_overwrite, llava_options


def add_parser(sub) -> None:
    q = sub.add_parser("convert", help="rewrite an HF-format NVILA conversion (model_type nvila / vila) or a LLaVA-1.5 "
                                       "folder (original or llava-hf) in the VILA layout (llm/, vision_tower/, "
                                       "mm_projector/), in safetensors")
    q.add_argument("checkpoint", metavar="FOLDER")
    q.add_argument("-o", "--out", required=True, metavar="OUT", help="the VILA-layout folder to write")
    add_overwrite(q)
    add_allow_pickle(q)
    add_llava_options(q)
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=run)


def run(args) -> int:
    if is_llava_folder(args.checkpoint):
        r = convert_llava(args.checkpoint, args.out, args.overwrite, not args.quiet, args.allow_pickle,
                          **llava_options(args))
        print(f"wrote {r.out}: the VILA layout of {r.src} (LLaVA-1.5, {r.model_type} layout); "
              + ", ".join(f"{part}/ {n} tensors" for part, n in r.tensors.items()) + f", {r.bytes / 2**20:.1f} MiB")
        print("semantics (recorded in config.json vila_edge_convert): "
              + ", ".join(f"{k}={json.dumps(v)}" for k, v in r.defaults.items()))
        print(f"next: vila-edge inspect {r.out}")
        return 0
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

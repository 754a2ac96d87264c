"""`vila-edge eval-ppl CHECKPOINT --text FILE`: perplexity of fp, RTN int4 and (with --awq) AWQ int4."""

import json

from ..errors import require_extra
from ..quant.options import PplOptions
from .options import add_allow_pickle, add_device, add_fields, add_format, add_llava_options, from_args, llava_options


def add_parser(sub) -> None:
    q = sub.add_parser("eval-ppl", help="perplexity of fp, RTN int4 and (with --awq) AWQ int4 on a text file")
    q.add_argument("source", help="the fp checkpoint (or an AWQ one, scored alone)")
    q.add_argument("--text", required=True, help="a .txt or .jsonl file the quantizer did not calibrate on")
    q.add_argument("--awq", metavar="QUANT", help="the AWQ checkpoint quantized from SOURCE")
    q.add_argument("--group-size", type=int, help="RTN group size (default: --awq's, else quantize's)")
    add_fields(q, PplOptions, "max_tokens", "seqlen", seqlen={"help": "tokens per window"})
    add_device(q)
    add_allow_pickle(q)
    add_llava_options(q)
    add_format(q, "text", "json")
    q.set_defaults(run=run)


def run(args) -> int:
    require_extra("quantize", "eval-ppl")
    from ..commands.eval_ppl import eval_ppl
    from ..commands.quantize import ppl_line

    ppl = eval_ppl(args.source, args.text, from_args(PplOptions, args, "max_tokens", "seqlen"), args.awq,
                   args.group_size, args.device, args.allow_pickle,
                   **llava_options(args))
    print(json.dumps(ppl, indent=2) if args.format == "json" else ppl_line(ppl))
    return 0

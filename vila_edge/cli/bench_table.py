"""`vila-edge bench-table RESULT...`: bench result JSONs -> markdown tables (decode tok/s, TTFT) and a plot."""

import sys


def add_parser(sub) -> None:
    q = sub.add_parser("bench-table", help="bench result JSONs -> markdown tables (decode tok/s, TTFT) and a plot")
    q.add_argument("results", nargs="+", metavar="RESULT", help="bench -o files, or folders of them")
    q.add_argument("-o", "--out", metavar="FILE", help="the markdown file to write (default: print it)")
    q.add_argument("--plot", metavar="PNG", help="also draw decode tok/s as a grouped bar chart")
    q.set_defaults(run=run)


def run(args) -> int:
    from ..atomic import write_text_atomic
    from ..bench_table import load_results, render_markdown, write_plot

    results = load_results(args.results)
    markdown = render_markdown(results)
    if args.plot:  # first: a missing matplotlib stops before any file is written
        bars = write_plot(results, args.plot)
        print(f"wrote {args.plot} ({bars} bars)", file=sys.stderr)
    if args.out:
        write_text_atomic(args.out, markdown)
        print(f"wrote {args.out} ({len(results)} results)", file=sys.stderr)
    else:
        print(markdown, end="")
    return 0

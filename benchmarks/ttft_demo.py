"""Time to first token for the demo VLM with one image on the cpu engine: before issue 21 and now.

The demo checkpoint's AWQ g64 LLM (benchmarks/cpu_engine.py's awq-g64) with its vision tower quantized W8A8 at
today's defaults, built into a cpu engine by each checkout's own build-engine (before: ttft_vila3b.py's worktree of
--before-rev, its extension built in place), then `vila-edge bench ENGINE --images 1` by each checkout's own CLI, the
two taking turns. TTFT, vision ms and prefill tok/s as bench reports them (medians of its repeats).

    .venv/bin/python benchmarks/ttft_demo.py [--before DIR]   # -> benchmarks/results/ttft_demo.json
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ttft_vila3b import BEFORE_DIR, BEFORE_REV, REPO, before_worktree  # noqa: E402

HERE = Path(__file__).parent
WORK = Path("demo/bench-cpu/ttft-demo")
FIELDS = ("ttft_s", "ttft_median_s", "vision_ms", "prefill_tok_s", "decode_tok_s", "prompt_tokens", "vision_backend")


def quantized() -> Path:
    """awq-g64 with its vision tower quantized W8A8 (the defaults), made once."""
    from cpu_engine import quantized as awq

    from vila_edge.checkpoint import load_checkpoint
    from vila_edge.export.vision_w8a8 import quantize_vision
    from vila_edge.quant.options import VisionQuantOptions

    out = WORK / "awq-g64-w8a8"
    if not (out / "vision").is_dir():
        tmp = WORK / "awq-g64-w8a8.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(awq(64), tmp)
        quantize_vision(load_checkpoint(tmp), tmp / "vision", VisionQuantOptions(n_images=16), log=print, threads=2)
        os.replace(tmp, out)
    return out


def cli(checkout: Path | None, *args: str) -> str:
    """The checkout's own CLI (`python -m` puts the working folder first on the path, so it runs there)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)} if checkout else dict(os.environ)
    return subprocess.run([sys.executable, "-m", "vila_edge.cli", *args], check=True, capture_output=True, text=True,
                          env=env, cwd=checkout or REPO).stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", default=BEFORE_DIR, help="a worktree of --before-rev (made if missing)")
    p.add_argument("--before-rev", default=BEFORE_REV)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / "ttft_demo.json"))
    args = p.parse_args()
    checkouts = {"before": before_worktree(Path(args.before), args.before_rev), "now": None}
    source = quantized().resolve()
    engines = {tag: (WORK / f"engine-{tag}").resolve() for tag in checkouts}
    for tag, checkout in checkouts.items():
        cli(checkout, "build-engine", str(source), "-o", str(engines[tag]), "--target", "cpu", "--overwrite")
    runs = {tag: [] for tag in checkouts}
    for _ in range(args.rounds):
        for tag, checkout in checkouts.items():
            out = cli(checkout, "bench", str(engines[tag]), "--images", "1", "--prompt-len", "64", "--gen-len", "32",
                      "--repeat", "5", "--threads", str(args.threads), "--format", "json")
            runs[tag].append({k: v for k, v in json.loads(out).items() if k in FIELDS})
            print(tag, json.dumps(runs[tag][-1]), flush=True)
    median = {tag: {k: statistics.median(r[k] for r in rs) for k in ("ttft_s", "vision_ms", "prefill_tok_s")}
              for tag, rs in runs.items()}
    results = {"what": __doc__.split("\n\n")[0], "before_rev": args.before_rev, "threads": args.threads,
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": runs, "median": median,
               "ttft_now_over_before": round(median["now"]["ttft_s"] / median["before"]["ttft_s"], 3)}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"median": median, "ttft_now_over_before": results["ttft_now_over_before"]}))


if __name__ == "__main__":
    main()

"""The live captioning loop on this machine: a generated clip played in real time (as a camera would
deliver it) through `caption --source --realtime`, with the cpu engine at 1 and 2 threads, with and
without --record, alone and beside a process that keeps one core busy.

Per run: captions, frames dropped while the model was busy, TTFT and decode tok/s (medians), and the
caption's age, the time from a frame's arrival to its caption being done (median and p90): how stale
a caption is when a viewer reads it.

    .venv/bin/python benchmarks/live_loop.py [--engine demo/vila-demo-cpu] [--seconds 10]
    # -> benchmarks/results/live_loop.json; needs `make demo` first (the demo engine)
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vila_edge.atomic import write_text_atomic
from vila_edge.caption import Captioner
from vila_edge.capture import caption_frames, open_source
from vila_edge.demo import write_sample_clip
from vila_edge.device import cpu_description
from vila_edge.generate import SamplingParams
from vila_edge.record import Recorder
from vila_edge.runtime.cpu import CpuEngine

HERE = Path(__file__).parent
WORK = Path("demo/bench-live")
QUESTION = "Describe the image."
BUSY = [sys.executable, "-c", "while True: pass"]


def one_run(engine_dir: Path, clip: Path, threads: int, record: bool, busy: bool, max_new_tokens: int) -> dict:
    engine = CpuEngine(engine_dir, threads=threads)
    captioner = Captioner(engine.info, engine)
    source = open_source(str(clip), realtime=True)
    recorder = None
    if record:
        out = WORK / f"recorded-t{threads}{'-busy' if busy else ''}.mp4"
        out.unlink(missing_ok=True)
        recorder = Recorder(out, source.fps)
        source.tap = recorder.write
    competitor = subprocess.Popen(BUSY) if busy else None
    try:
        time.sleep(0.2 if busy else 0)
        records, ages = [], []
        start = time.monotonic()  # the capture thread starts with the loop: frame t arrives at start + t
        for r in caption_frames(captioner, source, QUESTION, SamplingParams(max_new_tokens=max_new_tokens)):
            ages.append(time.monotonic() - start - r["timestamp"])
            records.append(r)
    finally:
        if competitor:
            competitor.kill()
        if recorder:
            recorder.close()
    return {
        "threads": threads,
        "record": record,
        "busy_neighbour": busy,
        "captions": len(records),
        "frames": source.sampled,
        "dropped": source.dropped,
        "ttft_s": round(statistics.median(r["ttft_s"] for r in records), 3),
        "decode_tok_s": round(statistics.median(r["decode_tok_s"] for r in records), 1),
        "caption_age_s": round(statistics.median(ages), 3),
        "caption_age_p90_s": round(float(np.percentile(ages, 90)), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", type=Path, default=Path("demo/vila-demo-cpu"))
    p.add_argument("--seconds", type=int, default=10, help="clip length (10 fps, 320x320)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--out", type=Path, default=HERE / "results" / "live_loop.json")
    args = p.parse_args()
    if not (args.engine / "manifest.json").is_file():
        sys.exit(f"{args.engine}: no cpu engine there; run make demo first (or pass --engine)")
    WORK.mkdir(parents=True, exist_ok=True)
    clip = write_sample_clip(WORK / "clip.mp4", seconds=args.seconds, fps=10, size=320)
    runs = []
    for busy in (False, True):
        for threads in (1, 2):
            for record in (False, True):
                run = one_run(args.engine, clip, threads, record, busy, args.max_new_tokens)
                print(json.dumps(run), flush=True)
                runs.append(run)
    result = {
        "machine": cpu_description(),
        "engine": str(args.engine),
        "clip": {"seconds": args.seconds, "fps": 10, "size": 320, "frames": 10 * args.seconds},
        "question": QUESTION,
        "max_new_tokens": args.max_new_tokens,
        "runs": runs,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print("\n| threads | record | busy neighbour | captions | dropped | TTFT s | decode tok/s | caption age s (p90) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['threads']} | {'yes' if r['record'] else 'no'} | {'yes' if r['busy_neighbour'] else 'no'} | "
              f"{r['captions']} | {r['dropped']} | {r['ttft_s']} | {r['decode_tok_s']} | "
              f"{r['caption_age_s']} ({r['caption_age_p90_s']}) |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

"""Time to first token for VILA1.5-3B's shape with one image on the cpu engine: before issue 21 and now.

VILA1.5-3B is SigLIP-so400m-384 (27 layers, 729 patches), the mlp_downsample projector (2x2 patches -> 196 tokens,
4608 -> 2560 -> 2560) and Sheared-LLaMA-2.7B (hidden 2560, 32 layers of 20 heads of 128, intermediate 6912, vocab
32000) in AWQ int4 g128. Random weights: the tower of benchmarks/vision_w8a8.py's so400m-shape checkpoint, quantized
at today's defaults; the LLM's int4 written straight into the engine layout (shapes.py).

TTFT = vision (tower and projector, one image) + a prefill of 196 image and TEXT_TOKENS text positions from an empty
cache up to the first token's logits.
- before (the cpu engine at --before-rev, issue 21's start): ONNX Runtime on the per-token dynamic int8 graph, the
  C++ engine of that revision (a git worktree, its extension built in place) prefilling;
- now: the faster of the native tower and ONNX Runtime (build-engine's default is the one its probe timed faster),
  this checkout's engine prefilling.
The vision runners take turns in this process; the prefills run in child processes, one per checkout, taking turns.
The so400m-shape checkpoint's projector maps to the demo LLM's 576, so the 2560-wide projector's extra time (PyTorch
fp32, both projectors timed here, as ONNX Runtime runs it in fp32 in both paths) is added to both.

    .venv/bin/python benchmarks/ttft_vila3b.py [--before DIR]   # -> benchmarks/results/ttft_vila3b.json
        # --before: a worktree of --before-rev with its extension built (made here if missing, a few minutes)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from shapes import SHEARED_2_7B, random_llm_file  # noqa: E402

HERE = Path(__file__).parent
REPO = HERE.parent
BEFORE_REV = "808c04a"  # the last commit before issue 21's first (prefix reuse, e09ebdd)
BEFORE_DIR = f"demo/bench-cpu/before-{BEFORE_REV}"  # its worktree, made where missing
IMAGE_TOKENS = 196  # 729 patches, 2x2 downsampled (27 -> 14 per side)
TEXT_TOKENS = 40  # vicuna_v1's system line, "USER: <image>\n", a short question, "ASSISTANT:"
SO400M_HIDDEN = 1152
CHECKPOINT_WIDTH = 576  # the so400m-shape checkpoint's projector output (the demo LLM's hidden size)


def prefill_child(path: Path, threads: int, repeat: int) -> dict:
    """In a child process, with whichever vila_edge its PYTHONPATH gives: seconds per prefill of the prompt."""
    from vila_edge.runtime.cpu import open_llm

    n = IMAGE_TOKENS + TEXT_TOKENS
    engine = open_llm(path, SHEARED_2_7B, max_seq=n + 8, threads=threads)
    embeds = (0.02 * np.random.default_rng(2).standard_normal((n, SHEARED_2_7B["hidden"]))).astype(np.float32)
    seconds = []
    for _ in range(repeat + 1):  # the first is the warm-up
        engine.reset()
        t = time.perf_counter()
        engine.prefill(embeds)
        seconds.append(time.perf_counter() - t)
    return {"kernels": engine.kernels, "tokens": n, "prefill_s": seconds[1:]}


def before_worktree(folder: Path, rev: str) -> Path:
    """A worktree of rev with its C++ extension built in place (pybind11 in a side folder: the venv has none)."""
    if not any(folder.glob("vila_edge/_runtime*.so")):
        if not folder.is_dir():
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-f", str(folder), rev], check=True)
        side = folder / ".pybind11"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(side), "pybind11"], check=True)
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=folder, check=True,
                       env={**os.environ, "PYTHONPATH": str(side)})
    export = folder / "vila_edge" / "export"  # installed as vila_edge.export (setup.py's package_dir): linked here
    if not export.exists():
        export.symlink_to("../export")
    return folder.resolve()  # the children run with other working folders


def prefills(before: Path, threads: int, rounds: int, repeat: int) -> dict[str, list[float]]:
    """The two checkouts' engines taking turns, a process each per round."""
    path = random_llm_file("sheared-2.7b", SHEARED_2_7B).resolve()
    out = {"before": [], "now": []}
    for _ in range(rounds):
        for tag, pythonpath in (("before", str(before)), ("now", "")):
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(HERE)) if p)}
            cmd = [sys.executable, __file__, "--child", str(path), "--threads", str(threads), "--repeat", str(repeat)]
            row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=REPO).stdout)
            out[tag] += row["prefill_s"]
            print(tag, json.dumps(row), flush=True)
    return out


def vision(repeat: int, threads: int) -> tuple[dict, dict]:
    """ms per image of the so400m tower (native and ONNX Runtime dynamic int8, taking turns), and of the projector
    at VILA1.5-3B's width and at the checkpoint's."""
    import torch
    from vision_native import native_files, quantized, taking_turns
    from vision_w8a8 import session, so400m_checkpoint

    from vila_edge.checkpoint import load_checkpoint
    from vila_edge.export.vision_w8a8 import pixels_of
    from vila_edge.formats import VISION_W8A8_DYNAMIC_FILE
    from vila_edge.model.projector import Projector
    from vila_edge.scenes import generated_images

    torch.set_num_threads(threads)
    work = Path("demo/bench-vision")
    root = so400m_checkpoint(work, Path("demo/vila-demo"))
    ckpt, folder = load_checkpoint(root), quantized(root, work, 16)
    native = native_files(ckpt, folder, work / root.name)
    ort = session(folder / VISION_W8A8_DYNAMIC_FILE)
    one = pixels_of(ckpt, generated_images(1, seed=5))
    tower = taking_turns({"native": lambda: native(one), "ort_dynamic_int8": lambda: ort.run(None, {"pixel_values": one})}, repeat)
    patches = torch.randn(1, 729, SO400M_HIDDEN)
    projectors = {w: Projector("mlp_downsample", SO400M_HIDDEN, w).eval() for w in (2560, CHECKPOINT_WIDTH)}
    with torch.inference_mode():
        projector = taking_turns({str(w): (lambda p=p: p(patches)) for w, p in projectors.items()}, repeat)
    return tower, projector


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", default=BEFORE_DIR, help="a worktree of --before-rev (made if missing)")
    p.add_argument("--before-rev", default=BEFORE_REV)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="child processes per checkout, taking turns")
    p.add_argument("--repeat", type=int, default=2, help="timed prefills per child, after one warm-up")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "results" / "ttft_vila3b.json"))
    args = p.parse_args()
    if args.child:
        print(json.dumps(prefill_child(Path(args.child), args.threads, args.repeat)))
        return
    from vila_edge import _runtime
    from vila_edge.device import cpu_description

    before = before_worktree(Path(args.before), args.before_rev)
    tower_ms, projector_ms = vision(5, args.threads)
    llm = prefills(before, args.threads, args.rounds, args.repeat)
    prefill_ms = {tag: round(1000 * statistics.median(s), 1) for tag, s in llm.items()}
    extra = projector_ms["2560"] - projector_ms[str(CHECKPOINT_WIDTH)]
    vision_ms = {"before": tower_ms["ort_dynamic_int8"] + extra, "now": min(tower_ms.values()) + extra}
    ttft = {tag: round((vision_ms[tag] + prefill_ms[tag]) / 1000, 3) for tag in ("before", "now")}
    results = {
        "what": __doc__.split("\n\n")[0],
        "settings": {"shape": SHEARED_2_7B, "image_tokens": IMAGE_TOKENS, "text_tokens": TEXT_TOKENS,
                     "threads": args.threads, "before_rev": args.before_rev, "rounds": args.rounds, "repeat": args.repeat},
        "machine": {"cpu": cpu_description(), "kernels": _runtime.best_kernels(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "tower_ms": tower_ms, "projector_ms": projector_ms, "projector_extra_ms_added": round(extra, 1),
        "vision_ms": {k: round(v, 1) for k, v in vision_ms.items()},
        "prefill_ms": prefill_ms, "prefill_tok_s": {k: round((IMAGE_TOKENS + TEXT_TOKENS) / v * 1000, 1) for k, v in prefill_ms.items()},
        "prefill_runs_s": {k: [round(x, 3) for x in v] for k, v in llm.items()},
        "ttft_s": ttft, "ttft_now_over_before": round(ttft["now"] / ttft["before"], 3),
    }
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("vision_ms", "prefill_ms", "ttft_s", "ttft_now_over_before")}))


if __name__ == "__main__":
    main()

"""`vila-edge bench ENGINE`: TTFT, vision, prefill and decode speed of an engine, as llama-bench
measures them (synthetic prompt of real text, a warm-up, fixed lengths, no early stop). No torch."""

import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import __version__
from .caption import Captioner
from .errors import UsageError


@dataclass
class BenchSettings:
    prompt_len: int = 128  # text tokens; images add their own
    gen_len: int = 64
    images: int = 0
    repeat: int = 3
    warmup: int = 1


def prompt_ids(captioner: Captioner, n_text: int, n_images: int) -> list[int]:
    """A chat prompt holding n_images image places and exactly n_text text tokens (real English)."""
    from .corpus import stdlib_docs

    words = " ".join(stdlib_docs("eval")).split()[: 2 * n_text + 64]  # enough: a word is at least one token
    base = len(captioner.prompt_ids("", n_images)) - n_images
    if n_text < base + 1:
        raise UsageError(f"--prompt-len {n_text}: the template alone takes {base} tokens; ask for more")
    lo, hi = 1, len(words)
    while lo < hi:  # the longest question whose prompt fits n_text tokens
        mid = (lo + hi + 1) // 2
        if len(captioner.prompt_ids(" ".join(words[:mid]), n_images)) - n_images <= n_text:
            lo = mid
        else:
            hi = mid - 1
    ids = captioner.prompt_ids(" ".join(words[:lo]), n_images)
    filler = captioner.tokenizer(" the", add_special_tokens=False).input_ids[-1]
    mid = len(ids) // 2  # inside the question: pad to the exact length
    return ids[:mid] + [filler] * (n_text - (len(ids) - n_images)) + ids[mid:]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_bench(engine, settings: BenchSettings) -> dict:
    """engine: a CpuEngine (or any backend with encode_images / splice / reset / prefill / decode)."""
    from .demo import draw_scene

    captioner = Captioner(engine.info, engine)
    ids = prompt_ids(captioner, settings.prompt_len, settings.images)
    pixels = None
    if settings.images:
        pixels = captioner.pixels([draw_scene(480, seed=i) for i in range(settings.images)])
    runs = []
    for i in range(settings.warmup + settings.repeat):
        t0 = time.perf_counter()
        embeds = engine.encode_images(pixels) if pixels is not None else None
        t1 = time.perf_counter()
        inputs = engine.splice(ids, embeds)
        engine.reset()
        token = int(np.argmax(engine.prefill(inputs)))
        t2 = time.perf_counter()
        for _ in range(settings.gen_len - 1):
            token = int(np.argmax(engine.decode(token)))
        t3 = time.perf_counter()
        if i >= settings.warmup:
            runs.append({"vision_s": t1 - t0, "ttft_s": t2 - t0, "prefill_s": t2 - t1, "decode_s": t3 - t2,
                         "prompt_tokens": len(inputs)})  # fmt: skip
    ttft = [r["ttft_s"] for r in runs]
    prefill_tok_s = [r["prompt_tokens"] / r["prefill_s"] for r in runs]
    decode_tok_s = [(settings.gen_len - 1) / r["decode_s"] for r in runs if r["decode_s"] > 0]
    manifest = engine.manifest
    return {
        "model": manifest["source"]["name"],
        "engine": str(engine.root),
        "target": manifest["target"],
        "precision": f"w4a8 g{manifest['quantization']['group_size']}, lm_head {manifest['quantization']['lm_head']}, "
        f"vision {(manifest.get('vision') or {}).get('precision', 'none')}",
        "prompt_tokens": runs[0]["prompt_tokens"],
        "text_tokens": settings.prompt_len,
        "images": settings.images,
        "gen_len": settings.gen_len,
        "repeat": settings.repeat,
        "warmup": settings.warmup,
        "ttft_s": statistics.mean(ttft),
        "ttft_median_s": statistics.median(ttft),
        "ttft_p90_s": _percentile(ttft, 90),
        "vision_ms": 1e3 * statistics.mean(r["vision_s"] for r in runs) / settings.images if settings.images else None,
        "prefill_tok_s": statistics.median(prefill_tok_s),
        "decode_tok_s": statistics.median(decode_tok_s) if decode_tok_s else None,
        "peak_rss_mb": peak_rss_mb(),
        "threads": engine.threads,
        "kernels": engine.kernels,
        "cpu": cpu_description(),
        "weights_mb": manifest["memory"]["weights_mb"],
        "vila_edge": __version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def cpu_description() -> str:
    from . import _runtime

    return f"{_runtime.cpu_name()} ({os.cpu_count()} logical CPUs, {platform.machine()})"


def format_text(r: dict) -> str:
    vision = f", vision {r['vision_ms']:.1f} ms/image" if r["vision_ms"] is not None else ""
    return (
        f"{r['model']} [{r['precision']}] on {r['cpu']}, {r['threads']} threads, {r['kernels']} kernels\n"
        f"  prompt {r['prompt_tokens']} tokens ({r['images']} image{'' if r['images'] == 1 else 's'}){vision}\n"
        f"  TTFT {r['ttft_s'] * 1e3:.1f} ms (median {r['ttft_median_s'] * 1e3:.1f}, p90 {r['ttft_p90_s'] * 1e3:.1f})\n"
        f"  prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s over {r['gen_len']} tokens\n"
        f"  peak RSS {r['peak_rss_mb']:.0f} MB"
    )

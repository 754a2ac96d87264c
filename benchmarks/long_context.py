"""Long context on the cpu engine: prefill and decode speed at 7,200 cached positions (issue 19, LLaMA-VID: an
hour of video at 1 fps on a 7B Vicuna) with an fp32, an fp16 and an int8 KV cache.

Vicuna-7B's shapes (hidden 4096, 32 heads of 128, no GQA, intermediate 11008, vocab 32000, rope linear x16 as
LLaMA-VID's config) with random int4 g128 weights written straight into the cpu engine layout, but only
--layers of its 32 so that it runs in a few minutes on a 2-core machine; the engine opened with max_seq 65,536
(LLaMA-VID's max_token), so the cache is sized by the context, not by max_seq. Each cache type runs in its own
process (its peak RSS is its own):
1. a prefill of --prefill positions from an empty cache: prefill tok/s at a short context;
2. the cache filled to --context - 64 positions by copying those rows (Engine.extend: prefilling 7,200 positions
   of 4 layers takes minutes here, and attention costs the same whatever the rows hold), then a real prefill of
   the last 64 positions (one chunk): prefill tok/s at the long context;
3. --gen greedy decode steps after it: decode tok/s at the long context.
The types take turns, --repeat processes each; each phase's best time is kept (the machine is shared).
Reported as measured at --layers, and extrapolated to 32 layers: prefill time x 32 / layers (the lm_head runs on
one row only); decode time split between the layers and the rest (lm_head, embedding row) in proportion to the
bytes each reads, the layers' part x 32 / layers. The bandwidth ceiling and the % of it as benchmarks/cpu_engine.py:
read GB/s (measured by each process just before its decode steps) / bytes a decoded token reads.

    .venv/bin/python benchmarks/long_context.py [--layers 4] [--context 7200] [--prefill 256] [--gen 16] [--threads 2] [--repeat 3]
        # -> benchmarks/results/long_context.json; the weights are cached under demo/bench-cpu/
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cpu_engine import save  # noqa: E402
from shapes import random_llm_tensors  # noqa: E402

from vila_edge import _runtime  # noqa: E402
from vila_edge.bandwidth import ceiling_tok_s, safetensors_bytes_per_token  # noqa: E402
from vila_edge.export.cpu_engine import write_llm  # noqa: E402
from vila_edge.formats import CPU_LLM_FILE  # noqa: E402
from vila_edge.runtime.cpu import KV_CACHE_BYTES, kv_cache_bytes, open_llm  # noqa: E402

HERE = Path(__file__).parent
WORK = Path("demo/bench-cpu")
MAX_SEQ = 65536  # LLaMA-VID's max_token (rope linear x16 over Vicuna's 4,096)
VICUNA_7B = {
    "hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 32, "head_dim": 128, "intermediate": 11008, "vocab": 32000,
    "rms_eps": 1e-5, "group_size": 128, "rope": {"rope_theta": 10000.0, "rope_type": "linear", "factor": 16.0},
}
CACHES = ("fp32", "fp16", "int8")
CHUNK = 64  # the engine's prefill chunk: the positions prefilled for real at the long context
GB = 2**30


def engine_file(layers: int) -> Path:
    path = WORK / f"vicuna-7b-shape-{layers}l" / CPU_LLM_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_llm(tmp, random_llm_tensors({**VICUNA_7B, "layers": layers}))
        os.replace(tmp, path)
    return path


def run_one(args) -> dict:
    """One cache type in this process: prefill, decode, memory."""
    spec = {**VICUNA_7B, "layers": args.layers}
    engine = open_llm(engine_file(args.layers), spec, MAX_SEQ, args.threads, kv_cache=args.one)
    at_open = engine.cache_bytes
    ids = np.random.default_rng(1).integers(0, spec["vocab"], args.prefill + CHUNK).astype(np.int32)
    embeds = engine.embed(ids)
    engine.prefill(embeds[:CHUNK])  # warm-up
    engine.reset()
    t = time.perf_counter()
    engine.prefill(embeds[: args.prefill])
    short_s = time.perf_counter() - t
    engine.extend(args.context - CHUNK - args.prefill)
    t = time.perf_counter()
    token = int(np.argmax(engine.prefill(embeds[args.prefill:])))
    long_s = time.perf_counter() - t
    token = int(np.argmax(engine.decode(token)))  # warm-up
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the probe's 1 GB buffer
    gb_s = _runtime.read_bandwidth(1024, args.threads, 5)  # the ceiling's GB/s, as the machine runs right now
    t = time.perf_counter()
    for _ in range(args.gen):
        token = int(np.argmax(engine.decode(token)))
    decode_s = time.perf_counter() - t
    return {
        "kv_cache": args.one, "kernels": engine.kernels, "prefill_short_s": short_s, "prefill_long_s": long_s,
        "decode_s": decode_s, "read_bandwidth_gb_s": round(gb_s, 2), "positions": engine.position, "cache_capacity": engine.cache_capacity,
        "cache_bytes": engine.cache_bytes, "cache_bytes_at_open": at_open,
        "peak_rss_mb": round(peak_rss_mb, 1),
    }


def best_of(runs: list[dict]) -> dict:
    """The fastest time of each phase over the repeats (each from its own process), the largest peak RSS."""
    best = {**runs[0], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "repeats": runs}
    for key in ("prefill_short_s", "prefill_long_s"):
        best[key] = min(r[key] for r in runs)
    fastest = min(runs, key=lambda r: r["decode_s"])  # with the GB/s its process read just before decoding
    best["decode_s"], best["read_bandwidth_gb_s"] = fastest["decode_s"], fastest["read_bandwidth_gb_s"]
    return best


def layer_and_rest_bytes(path: Path, spec: dict, context: float, kv: str) -> tuple[float, float]:
    """(bytes one layer reads per decoded token, its KV cache included; bytes the rest reads)."""
    total = safetensors_bytes_per_token(path, spec, context, KV_CACHE_BYTES[kv])
    sizes = {}
    from vila_edge.safetensors_header import read_header

    for name, t in read_header(path).items():
        sizes[name] = t["data_offsets"][1] - t["data_offsets"][0]
    per_layer = sum(n for name, n in sizes.items() if name.startswith("layers.0."))
    per_layer += kv_cache_bytes({**spec, "layers": 1}, context, kv)
    return per_layer, total - spec["layers"] * per_layer


def summarise(row: dict, args) -> dict:
    spec, path = {**VICUNA_7B, "layers": args.layers}, engine_file(args.layers)
    context = args.context + 1 + args.gen / 2  # mean cache length over the timed steps
    per_token = safetensors_bytes_per_token(path, spec, context, KV_CACHE_BYTES[row["kv_cache"]])
    decode_tok_s = args.gen / row["decode_s"]
    prefill = {"prefill_tok_s_short": args.prefill / row["prefill_short_s"], "prefill_tok_s_long": CHUNK / row["prefill_long_s"]}
    gb_s = row["read_bandwidth_gb_s"]
    limit = ceiling_tok_s(gb_s, per_token)
    layer, rest = layer_and_rest_bytes(path, spec, context, row["kv_cache"])
    decode_s32 = row["decode_s"] / args.gen * (rest + 32 * layer) / (rest + args.layers * layer)
    limit32 = ceiling_tok_s(gb_s, rest + 32 * layer)
    return {
        **row,
        "measured": {"layers": args.layers, **{k: round(v, 1) for k, v in prefill.items()},
                     "decode_tok_s": round(decode_tok_s, 2),
                     "bytes_per_token_mb": round(per_token / 1e6, 1), "decode_ceiling_tok_s": round(limit, 2),
                     "decode_pct_of_ceiling": round(100 * decode_tok_s / limit, 1)},
        "extrapolated_32_layers": {**{k: round(v * args.layers / 32, 2) for k, v in prefill.items()},
                                   "decode_tok_s": round(1 / decode_s32, 3),
                                   "bytes_per_token_mb": round((rest + 32 * layer) / 1e6, 1),
                                   "decode_ceiling_tok_s": round(limit32, 3),
                                   "kv_cache_allocated_gib": round(kv_cache_bytes(VICUNA_7B, row["cache_capacity"], row["kv_cache"]) / GB, 2)},
    }


def full_7b_kv(context: int) -> dict:
    """The KV cache a full 7B (32 layers x 32 kv heads x 128 x 2) needs for `context` positions, per type, GiB."""
    return {kv: round(kv_cache_bytes(VICUNA_7B, context, kv) / GB, 2) for kv in CACHES}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4, help="of Vicuna-7B's 32")
    p.add_argument("--context", type=int, default=7200, help="positions prefilled before decoding")
    p.add_argument("--prefill", type=int, default=256, help="positions prefilled from an empty cache")
    p.add_argument("--gen", type=int, default=16, help="decode steps timed at that context")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="processes per cache type, taking turns; the best time kept")
    p.add_argument("--one", choices=CACHES, help=argparse.SUPPRESS)  # a child process: one cache type
    p.add_argument("--out", default=str(HERE / "results" / "long_context.json"))
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return
    engine_file(args.layers)  # written once, before the timed children
    children = {kv: [] for kv in CACHES}
    for _ in range(args.repeat):  # the types take turns, so a drift in the shared machine's speed falls on all alike
        for kv in CACHES:
            cmd = [sys.executable, __file__, "--one", kv,
                   *(f"--{k}={getattr(args, k)}" for k in ("layers", "context", "prefill", "gen", "threads"))]
            children[kv].append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
            print(json.dumps(children[kv][-1]), flush=True)
    rows = [best_of(children[kv]) for kv in CACHES]
    results = {
        "what": __doc__.split("\n\n")[0],
        "settings": {"model": "Vicuna-7B shape, random int4 g128 weights",
                     "measures": {"prefill_tok_s_short": f"positions 0 .. {args.prefill} from an empty cache",
                                  "prefill_tok_s_long": f"positions {args.context - CHUNK} .. {args.context} (one chunk)",
                                  "decode_tok_s": f"{args.gen} steps from position {args.context + 1}"}, **{k: getattr(args, k) for k in ("layers", "context", "prefill", "gen", "threads", "repeat")},
                     "max_seq": MAX_SEQ, "shape": VICUNA_7B},
        "machine": {"cpu": _runtime.cpu_name(), "logical_cpus": os.cpu_count(), "kernels": rows[0]["kernels"],
                    "read_bandwidth": "measured in each process just before its decode steps (1 GB x 5, best)",
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "full_7b_kv_cache_gib": {"formula": "32 layers x 32 kv heads x 128 x 2 (K, V) x bytes per value (fp32 4, fp16 2, "
                                            "int8 1 + 2/32 for its fp16 scale per 32) x positions",
                                 "positions": args.context, **full_7b_kv(args.context)},
        "runs": [summarise(row, args) for row in rows],
    }
    save(results, Path(args.out))
    for r in results["runs"]:
        m, e = r["measured"], r["extrapolated_32_layers"]
        print(f"{r['kv_cache']}: {args.layers} layers measured: prefill {m['prefill_tok_s_short']} / {m['prefill_tok_s_long']} "
              f"tok/s (short / long context), decode {m['decode_tok_s']} tok/s ({m['decode_pct_of_ceiling']} % of the "
              f"ceiling), cache {r['cache_bytes'] / GB:.2f} GiB, peak RSS {r['peak_rss_mb']:.0f} MB; 32 layers "
              f"extrapolated: prefill {e['prefill_tok_s_short']} / {e['prefill_tok_s_long']}, decode {e['decode_tok_s']} tok/s")


if __name__ == "__main__":
    main()

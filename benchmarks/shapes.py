"""LLM shapes the benchmarks run with random weights, and their int4 written straight into the cpu engine's layout
(the tensors export.cpu_engine.llm_tensors writes; random nibbles cost what trained ones do)."""

import os
from pathlib import Path

import numpy as np

WORK = Path("demo/bench-cpu")
LLAMA_1B = {  # Llama-3.2-1B (rope left at the default type)
    "hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "head_dim": 64, "intermediate": 8192,
    "vocab": 128256, "rms_eps": 1e-5, "group_size": 128, "rope": {"rope_theta": 500000.0, "rope_type": "default"},
}
SHEARED_2_7B = {  # Sheared-LLaMA-2.7B, VILA1.5-3B's LLM
    "hidden": 2560, "layers": 32, "heads": 20, "kv_heads": 20, "head_dim": 128, "intermediate": 6912,
    "vocab": 32000, "rms_eps": 1e-5, "group_size": 128, "rope": {"rope_theta": 10000.0, "rope_type": "default"},
}
SHAPES = {"llama-1b": ("Llama-3.2-1B", LLAMA_1B), "sheared-2.7b": ("Sheared-LLaMA-2.7B", SHEARED_2_7B)}


def random_q4(rng: np.random.Generator, n: int, k: int, group: int) -> dict[str, np.ndarray]:
    """Random nibbles (already pair-packed: random bytes are random pairs), scales ~ 1 / sqrt(k)."""
    scales = rng.uniform(0.5, 1.5, (n, k // group)) * (0.2 / np.sqrt(k))
    return {"q": rng.integers(0, 256, (n, k // 2), dtype=np.uint8), "scales": scales.astype(np.float16),
            "zeros": np.full((n, k // group), 8, np.uint8)}


def random_llm_tensors(spec: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """The cpu engine's LLM tensors at spec's shape, random int4 linears (an int8 lm_head, as the engine writes)."""
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


def random_llm_file(slug: str, spec: dict) -> Path:
    """demo/bench-cpu/<slug>-shape/llm.safetensors, written once."""
    from vila_edge.export.cpu_engine import write_llm
    from vila_edge.formats import CPU_LLM_FILE

    path = WORK / f"{slug}-shape" / CPU_LLM_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_llm(tmp, random_llm_tensors(spec))
        os.replace(tmp, path)
    return path

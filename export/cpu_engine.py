"""`build-engine --target cpu`: the AWQ llm/ repacked for the C++ kernels, the vision ONNX, the
tokenizer and the prompt template, and manifest.json. Runs where the checkpoint was quantized
(torch, transformers); the engine it writes needs neither.

llm.safetensors, tensor by tensor (N out, K in, G group):
    embed                     F16 [V, H]        lm_head.q / .scales   I8 [V, H] / F16 [V, H/32]
    norm, layers.i.attn_norm, layers.i.ffn_norm   F32 [H]       (or lm_head.weight F16 [V, H])
    layers.i.{qkv,o,gate_up,down}.q        U8 [N, ceil(K/64)·32]: 64 weights per 32 bytes, weight
                                           j in byte j's low nibble, weight 32 + j in its high nibble
    layers.i.{...}.scales / .zeros         F16 / U8 [N, K/G];  w = scale · (q - zero)
    layers.i.qkv.bias                      F32 [N] (Qwen2)
qkv stacks q, k, v rows; gate_up stacks gate rows, then up rows.
"""

from pathlib import Path

import numpy as np
from tqdm import tqdm

from vila_edge.atomic import atomic_dir, current_umask
from vila_edge.errors import UsageError
from vila_edge.formats import CPU_LAYOUT, CPU_LLM_FILE, VISION_DIR, VISION_FILES, cpu_vision
from vila_edge.runtime.manifest import write_manifest

from .common import copy_vision, load_awq_source, read_llm_state, stacked_awq, write_front
from .options import BuildOptions
from .vision_native import write_native_vision

QK = 32


# ---- int4 repacking -----------------------------------------------------------------------------


def pack_pairs(q: np.ndarray) -> np.ndarray:
    """uint8 [N, K] in 0..15 -> [N, ceil(K/64)·32]: weights j and 32 + j of each 64 share byte j."""
    n, k = q.shape
    padded = np.zeros((n, -(-k // 64) * 64), np.uint8)
    padded[:, :k] = q
    pairs = padded.reshape(n, -1, 2, 32)
    return (pairs[:, :, 0] | pairs[:, :, 1] << 4).reshape(n, -1)


def unpack_pairs(packed: np.ndarray, k: int) -> np.ndarray:
    """pack_pairs' inverse."""
    n = packed.shape[0]
    chunks = packed.reshape(n, -1, 32)
    return np.stack([chunks & 0xF, chunks >> 4], axis=2).reshape(n, -1)[:, :k]


def int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, K] -> (int8 [N, K], fp16 scales [N, K/32]): symmetric, one scale per 32 along K."""
    n, k = w.shape
    blocks = w.astype(np.float32).reshape(n, k // QK, QK)
    scales = (np.abs(blocks).max(axis=-1) / 127).astype(np.float16)
    s = scales.astype(np.float32)[..., None]
    q = np.divide(blocks, s, out=np.zeros_like(blocks), where=s > 0)
    return np.clip(np.rint(q), -127, 127).astype(np.int8).reshape(n, k), scales


# ---- the LLM -----------------------------------------------------------------------------------


def llm_tensors(state: dict[str, np.ndarray], spec: dict, lm_head: str = "int8") -> dict[str, np.ndarray]:
    """AutoAWQ-layout state dict -> the engine's tensors (see the module docstring)."""
    f32 = lambda name: state[name].astype(np.float32)  # noqa: E731

    def q4(prefix: str, parts: list[str], bias: bool = False) -> dict[str, np.ndarray]:
        q, scales, zeros = stacked_awq(state, [f"{prefix}.{p}" for p in parts])
        out = {"q": pack_pairs(q), "scales": scales.astype(np.float16), "zeros": zeros}  # fp16 scales, exact
        if bias:
            out["bias"] = np.concatenate([f32(f"{prefix}.{p}.bias") for p in parts])
        return out

    embed = state["model.embed_tokens.weight"].astype(np.float16)
    tensors = {"embed": embed, "norm": f32("model.norm.weight")}
    for i in tqdm(range(spec["layers"]), desc="cpu engine weights", unit="layer", leave=False):
        src, dst = f"model.layers.{i}", f"layers.{i}"
        linears = {
            "qkv": q4(f"{src}.self_attn", ["q_proj", "k_proj", "v_proj"], spec["qkv_bias"]),
            "o": q4(f"{src}.self_attn", ["o_proj"]),
            "gate_up": q4(f"{src}.mlp", ["gate_proj", "up_proj"]),
            "down": q4(f"{src}.mlp", ["down_proj"]),
        }
        tensors |= {f"{dst}.{lin}.{k}": v for lin, parts in linears.items() for k, v in parts.items()}
        tensors[f"{dst}.attn_norm"] = f32(f"{src}.input_layernorm.weight")
        tensors[f"{dst}.ffn_norm"] = f32(f"{src}.post_attention_layernorm.weight")
    head = state.get("lm_head.weight", embed).astype(np.float16)
    if lm_head == "int8":
        tensors["lm_head.q"], tensors["lm_head.scales"] = int8_rows(head)
    else:
        tensors["lm_head.weight"] = head
    return tensors


def write_llm(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """safetensors sorts tensors by alignment (F32, then F16, then bytes), which the mmap relies on."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={"layout": CPU_LAYOUT})
    path.chmod(0o666 & ~current_umask())  # safetensors creates it private


# ---- the engine folder ---------------------------------------------------------------------------


def cpu_vision_spec(ckpt, vision: str, out: Path) -> dict | None:
    """The vision ONNX copied in and, for the per-token dynamic graph of a tower our kernels run, the native files."""
    spec = copy_vision(ckpt, vision, out)
    if vision == "w8a8-dynamic" and ckpt.llamavid is None:
        native = write_native_vision(out / spec["file"], ckpt)
        if native:
            spec["native"] = native
    return spec


def build_cpu_engine(source: str | Path, out: str | Path, vision: str | None = BuildOptions.vision,
                     lm_head: str = BuildOptions.lm_head, conv_mode: str | None = None, overwrite: bool = False) -> dict:
    """Quantized checkpoint -> engine folder (atomic); returns the manifest."""
    ckpt, spec = load_awq_source(source)
    vision = vision or cpu_vision(ckpt.root / VISION_DIR)
    if vision not in (*VISION_FILES, "none") or lm_head not in ("int8", "fp16"):
        raise UsageError(f"--vision {vision} / --lm-head {lm_head}: choose --vision w8a8-dynamic|w8a8|fp32|none, --lm-head int8|fp16")
    with atomic_dir(out, overwrite) as tmp:
        front = write_front(ckpt, source, conv_mode, tmp)
        write_llm(tmp / CPU_LLM_FILE, llm_tensors(read_llm_state(ckpt), spec, lm_head))
        manifest = write_manifest(
            tmp,
            "cpu",
            quantization={"method": "awq", "w_bit": 4, "group_size": spec["group_size"], "lm_head": lm_head,
                          "activations": "int8 per 32 (on the fly)"},
            llm={"file": CPU_LLM_FILE, "layout": CPU_LAYOUT, **spec},
            vision=cpu_vision_spec(ckpt, vision, tmp),
            memory={"weights_mb": round((tmp / CPU_LLM_FILE).stat().st_size / 2**20, 1)},
            **front,
        )
    return manifest



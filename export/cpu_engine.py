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

import hashlib
import platform
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vila_edge import __version__
from vila_edge.atomic import atomic_dir, current_umask
from vila_edge.checkpoint import Checkpoint, load_checkpoint
from vila_edge.conversation import get_template, resolve_conv_mode
from vila_edge.errors import UnsupportedError, UsageError
from vila_edge.quant.awq_format import is_awq
from vila_edge.quant.int4 import unpack_awq_gemm
from vila_edge.runtime.cpu import LAYOUT, LLM_FILE, ROPE_TYPES
from vila_edge.runtime.manifest import write_manifest
from vila_edge.runtime.tokenizer import save_engine_tokenizer

QK = 32
VISION_FILES = {"w8a8": "vision_w8a8.onnx", "fp32": "vision_fp32.onnx"}


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


def llm_spec(ckpt: Checkpoint) -> dict:
    """What an engine needs to know about the LLM, as its manifest records it; refuses what engines cannot run."""
    c, where = ckpt.llm_config, ckpt.llm_dir / "config.json"
    arch = c["model_type"]
    if c.get("hidden_act", "silu") != "silu" or c.get("mlp_bias"):
        raise UnsupportedError(f"{where}: vila-edge engines run SiLU MLPs without bias (hidden_act {c.get('hidden_act')!r})")
    if arch == "llama" and c.get("attention_bias"):
        raise UnsupportedError(f"{where}: attention_bias on a Llama is not supported by vila-edge engines")
    rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    rope.setdefault("rope_theta", c.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ROPE_TYPES:
        raise UnsupportedError(f"{where}: rope type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    heads = c["num_attention_heads"]
    return {
        "architecture": arch,
        "hidden": c["hidden_size"],
        "layers": c["num_hidden_layers"],
        "heads": heads,
        "kv_heads": c.get("num_key_value_heads") or heads,
        "head_dim": c.get("head_dim") or c["hidden_size"] // heads,
        "intermediate": c["intermediate_size"],
        "vocab": c["vocab_size"],
        "rms_eps": c.get("rms_norm_eps", 1e-6),
        "rope": {**rope, "rope_type": rope_type},
        "max_position_embeddings": c["max_position_embeddings"],
        "qkv_bias": arch == "qwen2",
        "group_size": c["quantization_config"]["group_size"],
        "tie_word_embeddings": bool(c.get("tie_word_embeddings")),
    }


def read_llm_state(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    state = {}
    for f in ckpt.weights["llm"]:
        state.update(load_file(f))
    return state


def stacked_awq(state: dict[str, np.ndarray], names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The AWQ linears `names` (e.g. q, k, v) unpacked and stacked along the output, in that order:
    (q uint8 [N, K], scales float32 [N, K/G], zeros uint8 [N, K/G])."""
    unpacked = [unpack_awq_gemm(*(torch.from_numpy(state[f"{n}.{s}"]) for s in ("qweight", "qzeros", "scales")))
                for n in names]  # fmt: skip
    q, scales, zeros = (torch.cat(t).numpy() for t in zip(*unpacked))
    return q, scales, zeros


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

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={"layout": LAYOUT})
    path.chmod(0o666 & ~current_umask())  # safetensors creates it private


# ---- the engine folder ---------------------------------------------------------------------------


def fingerprint(ckpt: Checkpoint) -> str:
    """sha256 over the configs and every weight file's name, size and header: cheap, and changes with the weights."""
    h = hashlib.sha256()
    for folder in (ckpt.root, ckpt.llm_dir, ckpt.vision_dir, ckpt.projector_dir):
        for f in sorted(folder.glob("*.json")):
            h.update(f.name.encode() + f.read_bytes())
    for files in ckpt.weights.values():
        for f in files:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                h.update(f.name.encode() + str(f.stat().st_size).encode() + fh.read(min(n, 1 << 26)))
    return h.hexdigest()


def copy_vision(ckpt: Checkpoint, vision: str, out: Path) -> dict | None:
    if vision == "none":
        return None
    src = ckpt.root / "vision" / VISION_FILES[vision]
    if not src.is_file():
        raise UsageError(
            f"{src}: missing; engines take the vision tower as ONNX from `vila-edge quantize` "
            f"(--vision w8a8 writes both {', '.join(VISION_FILES.values())}). Re-quantize, or pass --vision none for text only"
        )
    (out / "vision").mkdir()
    for f in (src, src.with_name(src.name + ".data")):
        if f.is_file():
            shutil.copy2(f, out / "vision" / f.name)
    return {
        "file": f"vision/{src.name}",
        "precision": vision,
        "image_size": ckpt.image_size,
        "tokens_per_image": ckpt.tokens_per_image,
        "projector": ckpt.projector_type,
        "projector_order": ckpt.projector_order(),
    }


def load_awq_source(source: str | Path) -> tuple[Checkpoint, dict]:
    """(the quantized checkpoint, its llm_spec); refuses a checkpoint that is not AWQ int4."""
    ckpt = load_checkpoint(source)
    if not is_awq(ckpt.llm_config):
        raise UsageError(
            f"{ckpt.llm_dir}: not AWQ-quantized; engines run int4 weights. "
            f"Quantize first: vila-edge quantize {ckpt.root} -o QUANTIZED"
        )
    return ckpt, llm_spec(ckpt)


def write_front(ckpt: Checkpoint, source: str | Path, conv_mode: str | None, folder: Path) -> dict:
    """The tokenizer into folder/tokenizer; returns the manifest fields every engine carries (source,
    where it was made, the prompt side, the image preprocessing)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ckpt.llm_dir)
    mode, _ = resolve_conv_mode(ckpt, conv_mode, tokenizer)
    save_engine_tokenizer(tokenizer, folder / "tokenizer")
    return {
        "source": {"path": str(Path(source).resolve()), "name": ckpt.name, "fingerprint": fingerprint(ckpt)},
        "built_on": {"machine": platform.machine(), "python": platform.python_version(), "vila_edge": __version__},
        "text": {
            "conv_mode": get_template(mode).name,
            "family": ckpt.family.name,
            "model_max_length": ckpt.model_max_length,
            "num_video_frames": ckpt.num_video_frames,
            "tokenizer": "tokenizer",
        },
        "preprocessor": ckpt.preprocessor,
        "image_aspect_ratio": ckpt.image_aspect_ratio,
    }


def build_cpu_engine(source: str | Path, out: str | Path, vision: str = "w8a8", lm_head: str = "int8",
                     conv_mode: str | None = None, overwrite: bool = False) -> dict:  # fmt: skip
    """Quantized checkpoint -> engine folder (atomic); returns the manifest."""
    ckpt, spec = load_awq_source(source)
    if vision not in (*VISION_FILES, "none") or lm_head not in ("int8", "fp16"):
        raise UsageError(f"--vision {vision} / --lm-head {lm_head}: choose --vision w8a8|fp32|none, --lm-head int8|fp16")
    with atomic_dir(out, overwrite) as tmp:
        front = write_front(ckpt, source, conv_mode, tmp)
        write_llm(tmp / LLM_FILE, llm_tensors(read_llm_state(ckpt), spec, lm_head))
        manifest = write_manifest(
            tmp,
            "cpu",
            quantization={"method": "awq", "w_bit": 4, "group_size": spec["group_size"], "lm_head": lm_head,
                          "activations": "int8 per 32 (on the fly)"},  # fmt: skip
            llm={"file": LLM_FILE, "layout": LAYOUT, **spec},
            vision=copy_vision(ckpt, vision, tmp),
            memory={"weights_mb": round((tmp / LLM_FILE).stat().st_size / 2**20, 1)},
            **front,
        )
    return manifest



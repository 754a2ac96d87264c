"""AWQ checkpoint -> TensorRT-LLM checkpoint (config.json + rank0.safetensors), in numpy, anywhere.

The weights keep our AWQ quantization exactly: asymmetric int4 with a zero point per group.
TensorRT-LLM's W4A16 kernel computes  w = q · scale + zero  with q signed (-8..7), so an AWQ
group (q_u in 0..15, z) becomes  q = q_u - 8,  zero = (8 - z) · scale  (fp16).

Tensors stay in the portable layout ModelOpt writes for W4A16_AWQ (module names: `LlmArch.trtllm_linears`); `trtllm-build` interleaves
them for the GPU it runs on (`preprocess_weights_for_mixed_gemm` depends on the SM), which is why
this checkpoint can be made on a laptop and the engine cannot:
    <linear>.weight                  int8 [N/2, K]  rows 2j (low nibble) and 2j + 1 (high nibble)
    <linear>.weights_scaling_factor  fp16 [N, K/G]  (the loader transposes it)
    <linear>.zero                    fp16 [K/G, N]  (the loader keeps it as it is: the engine's shape)
"""

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vila_edge.arch import get_llm, llm_for_trtllm_class
from vila_edge.atomic import current_umask
from vila_edge.checkpoint import Checkpoint
from vila_edge.errors import UnsupportedError
from vila_edge.formats import TRTLLM_CONFIG_FILE, TRTLLM_WEIGHTS_FILE

from .common import stacked_awq

QUANT_ALGO = "W4A16_AWQ"
GROUP_SIZES = (64, 128)  # the CUTLASS fine-grained (scale + zero) int4 GEMM's
# The head sizes TensorRT-LLM's generation attention kernel is compiled for (decoderMaskedMultiheadAttention.cu,
# MMHA_SUPPORTED_HEAD_SIZES); any other fails at the first generated token, after a build that succeeds.
HEAD_SIZES = (32, 48, 64, 80, 96, 104, 112, 128, 144, 160, 192, 224, 256)


# ---- one linear -----------------------------------------------------------------------------------


def pack_int4_rows(q: np.ndarray) -> np.ndarray:
    """signed int4 values int8 [N, K] -> int8 [N/2, K]: row 2j in the low nibble, row 2j + 1 in the high."""
    u = (q.astype(np.int16) & 0xF).astype(np.uint8)
    return (u[0::2] | u[1::2] << 4).view(np.int8)


def unpack_int4_rows(packed: np.ndarray) -> np.ndarray:
    """pack_int4_rows' inverse."""
    u = packed.view(np.uint8)
    nibbles = np.stack([u & 0xF, u >> 4], axis=1).reshape(-1, u.shape[1]).astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)


def trtllm_linear(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> dict[str, np.ndarray]:
    """An AWQ linear (q uint8 [N, K], scales [N, K/G], zeros uint8 [N, K/G]) -> TensorRT-LLM's tensors."""
    s16 = scales.astype(np.float16)
    zero = ((8 - zeros.astype(np.float32)) * s16.astype(np.float32)).astype(np.float16)
    return {
        "weight": pack_int4_rows(q.astype(np.int8) - 8),
        "weights_scaling_factor": s16,
        "zero": np.ascontiguousarray(zero.T),
    }


def dequantize_linear(weight: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """What the W4A16 kernel multiplies by: q · scale + zero, float32 [N, K]."""
    q = unpack_int4_rows(weight).astype(np.float32)
    group = q.shape[1] // scale.shape[1]
    s = np.repeat(scale.astype(np.float32), group, axis=1)
    z = np.repeat(zero.astype(np.float32).T, group, axis=1)
    return q * s + z


# ---- the model ------------------------------------------------------------------------------------


def _rotary_scaling(rope: dict) -> dict | None:
    kind = rope["rope_type"]
    if kind == "default":
        return None
    keys = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings")}[kind]
    return {"type": kind, **{k: rope[k] for k in keys}}


def trtllm_config(spec: dict) -> dict:
    """TensorRT-LLM's PretrainedConfig for the LLM of `llm_spec`, W4A16 AWQ with zero points, one GPU."""
    arch, group = get_llm(spec["architecture"]), spec["group_size"]
    if group not in GROUP_SIZES:
        raise UnsupportedError(f"AWQ group size {group}: TensorRT-LLM's int4 kernels take groups of "
                               f"{' or '.join(map(str, GROUP_SIZES))}; re-quantize with --group-size 128")
    if spec["head_dim"] not in HEAD_SIZES:
        raise UnsupportedError(f"head size {spec['head_dim']}: TensorRT-LLM's attention kernel runs head sizes "
                               f"{', '.join(map(str, HEAD_SIZES))}; this model needs the cpu target")
    multiple = max(64, group)  # TensorRT-LLM pads a groupwise linear's in/out features to max(64, group)
    dims = {"hidden_size": spec["hidden"], "intermediate_size": spec["intermediate"],
            "q/k/v rows": (spec["heads"] + 2 * spec["kv_heads"]) * spec["head_dim"],
            "attention.dense input": spec["heads"] * spec["head_dim"]}
    odd = {k: v for k, v in dims.items() if v % multiple}
    if odd:
        raise UnsupportedError(f"TensorRT-LLM pads int4 g{group} linears to multiples of {multiple}; "
                               f"{', '.join(f'{k} {v}' for k, v in odd.items())} would need padded weights")
    config = {
        "architecture": arch.trtllm_class,
        "dtype": "float16",
        "logits_dtype": "float32",
        "vocab_size": spec["vocab"],
        "max_position_embeddings": spec["max_position_embeddings"],
        "hidden_size": spec["hidden"],
        "num_hidden_layers": spec["layers"],
        "num_attention_heads": spec["heads"],
        "num_key_value_heads": spec["kv_heads"],
        "head_size": spec["head_dim"],
        "intermediate_size": spec["intermediate"],
        "hidden_act": "silu",
        "norm_epsilon": spec["rms_eps"],
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": spec["rope"]["rope_theta"],
        "rotary_scaling": _rotary_scaling(spec["rope"]),
        "attn_bias": spec["qkv_bias"],
        "mlp_bias": False,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "tie_word_embeddings": False,  # lm_head.weight is written out even where the source ties it
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": {
            "quant_algo": QUANT_ALGO,
            "kv_cache_quant_algo": None,
            "group_size": group,
            "has_zero_point": True,
            "pre_quant_scale": False,  # AWQ's scales are folded into the preceding norms and linears
            "exclude_modules": ["lm_head"],
        },
    }
    return config | arch.trtllm_config


def trtllm_tensors(state: dict[str, np.ndarray], spec: dict) -> dict[str, np.ndarray]:
    """AutoAWQ-layout state dict -> rank0's tensors (see the module docstring)."""
    f16 = lambda name: state[name].astype(np.float16)  # noqa: E731
    embed = f16("model.embed_tokens.weight")
    arch = get_llm(spec["architecture"])
    tensors = {
        "transformer.vocab_embedding.weight": embed,
        "transformer.ln_f.weight": f16("model.norm.weight"),
        "lm_head.weight": f16("lm_head.weight") if "lm_head.weight" in state else embed.copy(),
    }
    for i in tqdm(range(spec["layers"]), desc="TensorRT-LLM checkpoint", unit="layer", leave=False):
        src, dst = f"model.layers.{i}", f"transformer.layers.{i}"
        for module, (parent, parts) in arch.trtllm_linears.items():
            names = [f"{src}.{parent}.{p}" for p in parts]
            tensors |= {f"{dst}.{module}.{k}": v for k, v in trtllm_linear(*stacked_awq(state, names)).items()}
            if module == "attention.qkv" and spec["qkv_bias"]:
                tensors[f"{dst}.{module}.bias"] = np.concatenate([f16(f"{n}.bias") for n in names])
        for tllm, hf in arch.trtllm_norms.items():
            tensors[f"{dst}.{tllm}.weight"] = f16(f"{src}.{hf}.weight")
    return tensors


def dequantize_checkpoint(tensors: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """rank0's tensors -> HF-named float32 weights (q, k, v and the MLP unfused): the check that the
    checkpoint holds the model, readable on any machine."""
    hd = config["head_size"]
    q_rows, kv_rows = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    f32 = lambda name: tensors[name].astype(np.float32)  # noqa: E731
    arch = llm_for_trtllm_class(config["architecture"])
    out = {
        "model.embed_tokens.weight": f32("transformer.vocab_embedding.weight"),
        "model.norm.weight": f32("transformer.ln_f.weight"),
        "lm_head.weight": f32("lm_head.weight"),
    }
    for i in range(config["num_hidden_layers"]):
        src, dst = f"transformer.layers.{i}", f"model.layers.{i}"
        for module, (parent, parts) in arch.trtllm_linears.items():
            w = dequantize_linear(*(tensors[f"{src}.{module}.{k}"] for k in ("weight", "weights_scaling_factor", "zero")))
            sizes = {"q_proj": q_rows, "k_proj": kv_rows, "v_proj": kv_rows}
            bounds = np.cumsum([sizes.get(p, w.shape[0]) for p in parts])[:-1]
            bias = tensors.get(f"{src}.{module}.bias")
            for p, rows, b in zip(parts, np.split(w, bounds), np.split(bias, bounds) if bias is not None else [None] * 3):
                out[f"{dst}.{parent}.{p}.weight"] = rows
                if b is not None:
                    out[f"{dst}.{parent}.{p}.bias"] = b.astype(np.float32)
        for tllm, hf in arch.trtllm_norms.items():
            out[f"{dst}.{hf}.weight"] = f32(f"{src}.{tllm}.weight")
    return out


def write_trtllm_checkpoint(ckpt: Checkpoint, spec: dict, state: dict[str, np.ndarray], out: Path) -> dict:
    """config.json + rank0.safetensors into the folder `out`; returns the config."""
    from safetensors.numpy import save_file

    config = trtllm_config(spec)
    out.mkdir(parents=True, exist_ok=True)
    (out / TRTLLM_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    path = out / TRTLLM_WEIGHTS_FILE
    save_file({k: np.ascontiguousarray(v) for k, v in trtllm_tensors(state, spec).items()}, str(path),
              metadata={"format": "pt", "source": ckpt.name})
    path.chmod(0o666 & ~current_umask())  # safetensors creates it private
    return config

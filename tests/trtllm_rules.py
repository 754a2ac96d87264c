"""TensorRT-LLM's load rules for a W4A16 AWQ LLaMA / Qwen2 checkpoint, rewritten from its sources (not TensorRT-LLM
itself, which cannot be installed or run without a GPU) so every bundle the tests write is held to them:

- `tensorrt_llm/models/modeling_utils.py` `PretrainedModel.load`: every parameter the model declares must be in
  rank0.safetensors ("Required but not provided tensors") with its exact shape (`Parameter.value` asserts it);
  extra tensors are only a warning.
- `tensorrt_llm/quantization/layers.py` `WeightOnlyGroupwiseQuantColumnLinear/RowLinear`: in and out features are
  padded to a multiple of max(64, group); `weight` is loaded as int8 [out/2, in] and preprocessed to fp16 [in, out/4];
  `weights_scaling_factor` [out, in/G] is transposed; `zero` is [in/G, out], loaded as is; `prequant_scaling_factor`
  [in] only with `pre_quant_scale`.
- `tensorrt_llm/models/llama/model.py`, `qwen/model.py`: the module names (attention.qkv, attention.dense, mlp.fc,
  mlp.gate, mlp.proj, input_layernorm, post_layernorm, ln_f, vocab_embedding, lm_head); Qwen's q/k/v bias without a
  dense bias (`bias=attn_bias, dense_bias=False`).
- `cpp/tensorrt_llm/kernels/decoderMaskedMultiheadAttention.cu` MMHA_SUPPORTED_HEAD_SIZES; the CUTLASS fine-grained
  int4 GEMM's group sizes 64 and 128.
"""

import json
from pathlib import Path

from vila_edge.safetensors_header import read_header

HEAD_SIZES = {32, 48, 64, 80, 96, 104, 112, 128, 144, 160, 192, 224, 256}
GROUP_SIZES = {64, 128}
ARCHITECTURES = {"LlamaForCausalLM", "Qwen2ForCausalLM"}
FLOAT = {"F16", "BF16", "F32"}


def _padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def expected_tensors(config: dict) -> dict[str, tuple[tuple[int, ...], set[str]]]:
    """name -> (shape, allowed dtypes) that trtllm-build's loader demands for this config."""
    q = config["quantization"]
    group, h, f = q["group_size"], config["hidden_size"], config["intermediate_size"]
    hd, nh, nkv, v = config["head_size"], config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]
    multiple = max(64, group)
    want = {
        "transformer.vocab_embedding.weight": ((v, h), {"F16"}),
        "transformer.ln_f.weight": ((h,), {"F16"}),
        "lm_head.weight": ((v, h), {"F16"}),
    }
    linears = {"attention.qkv": (h, (nh + 2 * nkv) * hd), "attention.dense": (nh * hd, h),
               "mlp.fc": (h, f), "mlp.gate": (h, f), "mlp.proj": (f, h)}
    for i in range(config["num_hidden_layers"]):
        layer = f"transformer.layers.{i}"
        for norm in ("input_layernorm", "post_layernorm"):
            want[f"{layer}.{norm}.weight"] = ((h,), {"F16"})
        for name, (k, n) in linears.items():
            k, n = _padded(k, multiple), _padded(n, multiple)
            want[f"{layer}.{name}.weight"] = ((n // 2, k), {"I8"})
            want[f"{layer}.{name}.weights_scaling_factor"] = ((n, k // group), FLOAT)
            if q.get("has_zero_point"):
                want[f"{layer}.{name}.zero"] = ((k // group, n), {"F16"})
            if q.get("pre_quant_scale"):
                want[f"{layer}.{name}.prequant_scaling_factor"] = ((k,), FLOAT)
        if config.get("attn_bias"):
            want[f"{layer}.attention.qkv.bias"] = (((nh + 2 * nkv) * hd,), {"F16"})
    return want


def problems(checkpoint_dir: str | Path) -> list[str]:
    """Everything in a TensorRT-LLM checkpoint folder that trtllm-build would refuse, or that would fail at run time."""
    folder = Path(checkpoint_dir)
    config = json.loads((folder / "config.json").read_text())
    q = config.get("quantization") or {}
    out = []
    if config.get("architecture") not in ARCHITECTURES:
        out.append(f"architecture {config.get('architecture')!r} is not one of {sorted(ARCHITECTURES)}")
    if q.get("quant_algo") != "W4A16_AWQ":
        out.append(f"quant_algo {q.get('quant_algo')!r}, expected W4A16_AWQ")
    if q.get("group_size") not in GROUP_SIZES:
        out.append(f"group_size {q.get('group_size')} has no CUTLASS int4 kernel (64 or 128)")
    if config.get("head_size") not in HEAD_SIZES:
        out.append(f"head_size {config.get('head_size')} has no generation attention kernel")
    if config.get("mapping") != {"world_size": 1, "tp_size": 1, "pp_size": 1}:
        out.append(f"mapping {config.get('mapping')}: one GPU expected")
    if out:
        return out
    header = {k: v for k, v in read_header(folder / "rank0.safetensors").items() if k != "__metadata__"}
    for name, (shape, dtypes) in expected_tensors(config).items():
        if name not in header:
            out.append(f"required but not provided: {name}")
        elif tuple(header[name]["shape"]) != shape or header[name]["dtype"] not in dtypes:
            out.append(f"{name}: {header[name]['dtype']} {header[name]['shape']}, expected {'|'.join(sorted(dtypes))} {list(shape)}")
    # TensorRT-LLM only warns about these; in our own checkpoints they would be a naming mistake
    out += [f"provided but not required: {name}" for name in sorted(set(header) - set(expected_tensors(config)))]
    return out

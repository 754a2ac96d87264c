"""AWQ scale groups per LLM architecture, as data (llm-awq auto_scale.py; AutoAWQ get_layers_for_scaling).

Each group shares one input: `prev` absorbs 1/s, every module in `linears` is scaled by s on
its input columns, and the output of `inspect` scores each candidate s. Names are relative
to one decoder layer.
"""

from dataclasses import dataclass

from torch import nn

from ..errors import UnsupportedError


@dataclass(frozen=True)
class ScaleGroup:
    prev: str
    linears: tuple[str, ...]
    inspect: str


_LLAMA_LIKE = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    # Only without GQA: there v_proj has fewer outputs than o_proj has inputs (each kv head serves
    # several query heads), so a scale per o_proj input cannot be folded into v_proj (llm-awq PR #67).
    ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)

SCALE_GROUPS = {"llama": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE}  # Qwen2's q/k/v biases ride along with the weights


@dataclass
class ResolvedGroup:
    group: ScaleGroup
    prev: nn.Module
    linears: list[nn.Linear]
    inspect: nn.Module


def scale_groups(model_type: str, layer: nn.Module) -> list[ResolvedGroup]:
    """The groups that apply to this decoder layer; raises UnsupportedError for an unknown architecture."""
    if model_type not in SCALE_GROUPS:
        raise UnsupportedError(f"AWQ has no scale groups for LLM model_type {model_type!r}; supported: {', '.join(SCALE_GROUPS)}")
    resolved = []
    for g in SCALE_GROUPS[model_type]:
        prev = layer.get_submodule(g.prev)
        linears = [layer.get_submodule(name) for name in g.linears]
        if isinstance(prev, nn.Linear) and any(prev.out_features != lin.in_features for lin in linears):
            continue  # 1/s folds into prev's output rows only if they are the linears' inputs (the v -> o rule)
        resolved.append(ResolvedGroup(g, prev, linears, layer.get_submodule(g.inspect)))
    return resolved

"""AWQ scale groups (data in arch.py: `LlmArch.scale_groups`) resolved to the modules of one decoder layer,
after llm-compressor's ResolvedMapping."""

from dataclasses import dataclass

from torch import nn

from ..arch import ScaleGroup, get_llm


@dataclass
class ResolvedGroup:
    group: ScaleGroup
    prev: nn.Module
    linears: list[nn.Linear]
    inspect: nn.Module


def scale_groups(model_type: str, layer: nn.Module) -> list[ResolvedGroup]:
    """The groups that apply to this decoder layer; raises UnsupportedError for an unknown architecture."""
    resolved = []
    for g in get_llm(model_type, missing="AWQ has no scale groups for").scale_groups:
        prev = layer.get_submodule(g.prev)
        linears = [layer.get_submodule(name) for name in g.linears]
        if isinstance(prev, nn.Linear) and any(prev.out_features != lin.in_features for lin in linears):
            continue  # 1/s folds into prev's output rows only if they are the linears' inputs (the v -> o rule)
        resolved.append(ResolvedGroup(g, prev, linears, layer.get_submodule(g.inspect)))
    return resolved

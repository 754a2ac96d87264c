"""SmoothQuant for the vision tower (llm-awq smooth.py / NVILA's smooth_lm), folded into the LayerNorms (or RMSNorms).

Per input channel j of the linears after a LayerNorm: s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha).
The LayerNorm's weight and bias (an RMSNorm's weight) are divided by s, the linears' input columns multiplied by it:
the fp function is unchanged, and activation outliers move into the weights, which are
quantized per output channel and absorb them better than per-tensor int8 activations can.


`pairs` are the tower's (LayerNorm, the linears it feeds) inside one encoder layer: `VisionTower.smooth_pairs`
in arch.py.
"""

import torch
from torch import nn

Pairs = tuple[tuple[str, tuple[str, ...]], ...]


@torch.inference_mode()
def input_abs_max(layers: nn.ModuleList, pairs: Pairs, run, batches) -> dict[str, torch.Tensor]:
    """Per-channel max |x| at the input of each smoothed group, over all calibration batches.
    run(batch) must push the batch through the encoder holding `layers`."""
    stats: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0).float().cpu()
            stats[name] = torch.maximum(stats[name], x) if name in stats else x

        return record

    handles = [
        layer.get_submodule(linears[0]).register_forward_hook(hook(f"{i}.{norm}"))
        for i, layer in enumerate(layers)
        for norm, linears in pairs
    ]
    try:
        for batch in batches:
            run(batch)
    finally:
        for h in handles:
            h.remove()
    return stats


@torch.no_grad()
def smooth_layers(layers: nn.ModuleList, pairs: Pairs, act_max: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Fold the smoothing scales into every layer in place; returns them by `<layer>.<norm>`."""
    scales = {}
    for i, layer in enumerate(layers):
        for norm_name, linear_names in pairs:
            norm = layer.get_submodule(norm_name)
            linears = [layer.get_submodule(n) for n in linear_names]
            w_max = torch.cat([lin.weight.abs() for lin in linears]).amax(dim=0).float().clamp(min=1e-5)
            x_max = act_max[f"{i}.{norm_name}"].to(w_max.device).clamp(min=1e-5)
            s = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
            norm.weight.div_(s.to(norm.weight))
            if getattr(norm, "bias", None) is not None:  # an RMSNorm (InternViT) has a weight only
                norm.bias.div_(s.to(norm.bias))
            for lin in linears:
                lin.weight.mul_(s.to(lin.weight)[None, :])
            scales[f"{i}.{norm_name}"] = s.cpu()
    return scales

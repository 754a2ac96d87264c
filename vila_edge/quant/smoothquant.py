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


ALPHAS = tuple(round(a, 2) for a in torch.linspace(0.2, 0.9, 8).tolist())  # the per-layer search's grid
ROWS_PER_BATCH = 64  # input rows of each smoothed group kept per calibration batch, for the search


@torch.inference_mode()
def input_abs_max(layers: nn.ModuleList, pairs: Pairs, run, batches, rows: dict | None = None) -> dict[str, torch.Tensor]:
    """Per-channel max |x| at the input of each smoothed group, over all calibration batches (and, into `rows`, a
    sample of its input rows for search_alphas). run(batch) must push the batch through the encoder holding `layers`."""
    stats: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(0)

    def hook(name):
        def record(_module, inputs, _output):
            flat = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
            x = flat.abs().amax(dim=0).float().cpu()
            stats[name] = torch.maximum(stats[name], x) if name in stats else x
            if rows is not None:
                pick = torch.randperm(len(flat), generator=gen)[:ROWS_PER_BATCH]
                rows.setdefault(name, []).append(flat[pick].float().cpu())

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


def _scales(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    return (x_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)


def _fake_int8(t: torch.Tensor, dim: int | None, qmax: int) -> torch.Tensor:
    """Symmetric int8 round trip, per tensor (dim None) or per slice along `dim` (a weight's output channels)."""
    top = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    scale = top.clamp(min=1e-8) / qmax
    return (t / scale).round().clamp(-qmax, qmax) * scale


@torch.no_grad()
def search_alphas(layers: nn.ModuleList, pairs: Pairs, act_max: dict, rows: dict, weight_qmax: int = 63,
                  grid: tuple[float, ...] = ALPHAS) -> dict[str, float]:
    """Per smoothed group, the alpha whose int8 linears (activations per tensor at their max, weights per output
    channel) best reproduce the float outputs on the sampled input rows; not one alpha for every layer."""
    best = {}
    for i, layer in enumerate(layers):
        for norm_name, linear_names in pairs:
            key = f"{i}.{norm_name}"
            x = torch.cat(rows[key])
            w = torch.cat([layer.get_submodule(n).weight.float() for n in linear_names])  # [out, in]
            want = x @ w.T
            errors = {}
            for alpha in grid:
                s = _scales(act_max[key], w.abs().amax(dim=0), alpha)
                got = _fake_int8(x / s, None, 127) @ _fake_int8(w * s, 1, weight_qmax).T
                errors[alpha] = float(((got - want) ** 2).mean())
            best[key] = min(errors, key=errors.get)
    return best


@torch.no_grad()
def smooth_layers(layers: nn.ModuleList, pairs: Pairs, act_max: dict[str, torch.Tensor],
                  alpha: float | dict[str, float]) -> dict[str, torch.Tensor]:
    """Fold the smoothing scales into every layer in place (one alpha, or one per `<layer>.<norm>`); returns them by
    `<layer>.<norm>`."""
    scales = {}
    for i, layer in enumerate(layers):
        for norm_name, linear_names in pairs:
            norm = layer.get_submodule(norm_name)
            linears = [layer.get_submodule(n) for n in linear_names]
            w_max = torch.cat([lin.weight.abs() for lin in linears]).amax(dim=0).float().clamp(min=1e-5)
            x_max = act_max[f"{i}.{norm_name}"].to(w_max.device).clamp(min=1e-5)
            a = alpha[f"{i}.{norm_name}"] if isinstance(alpha, dict) else alpha
            s = _scales(x_max, w_max, a)
            norm.weight.div_(s.to(norm.weight))
            if getattr(norm, "bias", None) is not None:  # an RMSNorm (InternViT) has a weight only
                norm.bias.div_(s.to(norm.bias))
            for lin in linears:
                lin.weight.mul_(s.to(lin.weight)[None, :])
            scales[f"{i}.{norm_name}"] = s.cpu()
    return scales


def smooth(layers: nn.ModuleList, pairs: Pairs, run, batches, alpha: float | None = None,
           weight_qmax: int = 63) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """SmoothQuant from the calibration batches, folded in place: (the scales, the alpha of each group), one alpha for
    all or, with alpha None, each group's own (search_alphas)."""
    search = alpha is None
    rows = {} if search else None
    act_max = input_abs_max(layers, pairs, run, batches, rows)
    alphas = search_alphas(layers, pairs, act_max, rows, weight_qmax) if search else {k: alpha for k in act_max}
    return smooth_layers(layers, pairs, act_max, alphas), alphas

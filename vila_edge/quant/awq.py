"""The AWQ search, decoder layer by decoder layer (llm-awq auto_scale.py / auto_clip.py, in fp32).

For each layer: capture the inputs of its linears on the calibration set; for every scale group
search alpha on a grid (s = mean|x|^alpha, or AutoAWQ's duo scaling) scoring the inspected
block's output; fold the chosen scales into the previous op; search a clip range per output
row and group (q/k excluded); round to int4; feed the rounded layer's output to the next layer.
Only one layer is on the compute device at a time; activations wait on the CPU.

The objective of each scale group (llm-compressor's _compute_best_scale, llm-awq's auto_scale):

    s* = argmin_s  || B(Q(W · diag(s)) · diag(s)^-1 · X) - B(W · X) ||²,    s = mean|X|^alpha,  alpha in [0, 1)

W: the group's linears stacked (`ResolvedGroup.linears`), X: their captured input (`feats`), B: the
inspected block (`ResolvedGroup.inspect`: self_attn, the MLP, or the linear itself), Q: int4 group
round-to-nearest (`pseudo_quantize`). alpha steps over `AwqSettings.n_grid` values; alpha = 0 is RTN.
The clip search then picks, per output row and group, the max |w| (down to `max_shrink` of it) that
minimises || Q(clip(W)) X - W X ||² on `clip_tokens` sampled tokens.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..arch import get_llm
from ..awq_checkpoint import load_awq_results
from ..errors import QuantizeError
from ..int4 import dequantize_groups, pack_awq_gemm, pseudo_quantize, quantize_groups
from ..timing import Stopwatch
from .mappings import scale_groups
from .options import AwqSettings


@dataclass
class LayerReport:
    index: int
    rtn_loss: float  # MSE of the layer output, round-to-nearest vs fp
    awq_loss: float  # the same after scale + clip search
    alphas: dict[str, float]  # scale group (its prev op) -> chosen alpha
    seconds: dict[str, float]


@dataclass
class AwqResult:
    scales: dict[str, tuple[list[str], torch.Tensor]] = field(default_factory=dict)  # prev op -> (linears, s)
    clips: dict[str, torch.Tensor] = field(default_factory=dict)  # linear -> max |w| [N, K/G]
    packed: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # linear -> AutoAWQ GEMM tensors
    layers: list[LayerReport] = field(default_factory=list)
    guards: list[str] = field(default_factory=list)  # where a non-finite candidate was skipped


# ---- folding and clipping (also used to re-apply saved results) -----------------------------------


@torch.no_grad()
def fold_scales(prev: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """prev's output / s, the linears' input columns * s: the fp function is unchanged."""
    s = s.to(prev.weight.device, prev.weight.dtype)
    if isinstance(prev, nn.Linear):  # its last len(s) output rows feed the linears (llm-awq scale_fc_fc)
        prev.weight[-len(s) :].div_(s[:, None])
    else:  # RMSNorm / LayerNorm
        prev.weight.div_(s)
    if getattr(prev, "bias", None) is not None:
        prev.bias[-len(s) :].div_(s)
    for lin in linears:
        lin.weight.mul_(s[None, :])


@torch.no_grad()
def apply_clip(linear: nn.Linear, max_val: torch.Tensor) -> None:
    n, k = linear.weight.shape
    m = max_val.to(linear.weight)[..., None]
    w = linear.weight.view(n, max_val.shape[1], -1)
    linear.weight.copy_(torch.maximum(torch.minimum(w, m), -m).view(n, k))


@torch.no_grad()
def round_linear(linear: nn.Linear, group_size: int) -> dict[str, torch.Tensor]:
    """int4 in GEMM layout; the module keeps the dequantised weight so later layers see the rounding."""
    q, scales, zeros = quantize_groups(linear.weight, group_size)
    packed = pack_awq_gemm(q.cpu(), scales.cpu(), zeros.cpu())
    # the checkpoint stores fp16 scales: compute with exactly those
    linear.weight.copy_(dequantize_groups(q, scales.half().float(), zeros).to(linear.weight))
    return packed


def is_clipped(name: str) -> bool:
    """llm-awq skips q and k: their error is amplified through the q·k product, not seen by a per-linear loss."""
    return not any(part in name for part in ("q_proj", "k_proj"))


# ---- running pieces of a layer on the calibration set -------------------------------------------


class _Positions:
    """Rotary embeddings and the causal mask per sequence length, made on the device once."""

    def __init__(self, llm, device):
        self.rotary = llm.model.rotary_emb.to(device)
        self.device, self.cache = device, {}

    def __call__(self, x: torch.Tensor):
        n = x.shape[1]
        if n not in self.cache:
            pos = torch.arange(n, device=self.device)[None]
            mask = torch.full((n, n), float("-inf"), device=self.device).triu(1)[None, None]
            self.cache[n] = (pos, self.rotary(x, pos), mask.to(x.dtype))
        return self.cache[n]


def _run(module: nn.Module, x: torch.Tensor, positions: _Positions, kind: str) -> torch.Tensor:
    """kind: layer (a whole decoder layer), attn (its self_attn) or plain (mlp, a linear)."""
    if kind == "plain":
        return module(x)
    pos, rope, mask = positions(x)
    if kind == "attn":
        return module(hidden_states=x, attention_mask=mask, position_embeddings=rope)[0]
    out = module(x, attention_mask=mask, position_ids=pos, position_embeddings=rope)
    return out[0] if isinstance(out, tuple) else out


def _kind(name: str) -> str:
    return "attn" if name.endswith("self_attn") else "plain"


def chunk_samples(samples: list[torch.Tensor], chunk_tokens: int) -> list[torch.Tensor]:
    """[L, H] samples -> [B, L, H] batches of equal length, at most chunk_tokens each (one sample if longer)."""
    by_length: dict[int, list[torch.Tensor]] = {}
    for s in samples:
        by_length.setdefault(s.shape[0], []).append(s)
    chunks = []
    for length, group in by_length.items():
        per = max(1, chunk_tokens // length)
        chunks += [torch.stack(group[i : i + per]) for i in range(0, len(group), per)]
    return chunks


class _Search:
    def __init__(self, llm, model_type: str, settings: AwqSettings, device: str):
        self.llm, self.model_type, self.cfg, self.device = llm, model_type, settings, device
        self.positions = _Positions(llm, device)
        # The linears that share an input site: the first linear of each group (q_proj for q/k/v).
        self.sites = {lin: g.linears[0] for g in get_llm(model_type).scale_groups for lin in g.linears}
        self.result = AwqResult()

    def forward(self, module, chunks, kind) -> list[torch.Tensor]:
        outs = []
        with torch.inference_mode():
            for x in chunks:
                outs.append(_run(module, x.to(self.device), self.positions, kind).float().cpu())
        return outs

    def capture(self, layer, chunks) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]]:
        """The inputs of each input site's linear, and the layer's fp outputs."""
        feats: dict[str, list[torch.Tensor]] = {name: [] for name in set(self.sites.values())}
        handles = [
            layer.get_submodule(name).register_forward_hook(
                lambda _m, inp, _out, name=name: feats[name].append(inp[0].detach().float().cpu())
            )
            for name in feats
        ]
        try:
            outs = self.forward(layer, chunks, "layer")
        finally:
            for h in handles:
                h.remove()
        return feats, outs

    def loss(self, module, chunks, targets, kind) -> float:
        total, count = 0.0, 0
        with torch.inference_mode():
            for x, y in zip(chunks, targets):
                out = _run(module, x.to(self.device), self.positions, kind).float()
                total += (out - y.to(self.device)).pow(2).sum().item()
                count += y.numel()
        return total / count

    @torch.no_grad()
    def search_scale(self, where: str, group, x: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """The alpha (and its s) with the lowest output MSE of the inspected block; alpha 0 is plain RTN."""
        g, kind = self.cfg.group_size, _kind(group.group.inspect)
        k = x[0].shape[-1]
        x_mean = sum(c.abs().reshape(-1, k).sum(0, dtype=torch.float64) for c in x) / sum(c.numel() // k for c in x)
        x_mean = x_mean.float().to(self.device)
        if not torch.isfinite(x_mean).all():
            raise QuantizeError(
                f"{where}: the fp model's activations into {', '.join(group.group.linears)} are not finite; "
                "the checkpoint or the calibration data overflows (try --calib text:FILE, or check the weights)"
            )
        originals = [lin.weight.detach().clone() for lin in group.linears]
        if self.cfg.duo_scaling:  # AutoAWQ: mean over rows of |w| relative to its group's max
            w = torch.cat(originals).abs().view(-1, g)
            w_mean = (w / (w.amax(dim=1, keepdim=True) + 1e-6)).view(-1, k).mean(0)
        targets = self.forward(group.inspect, x, kind)
        best = (math.inf, None, None)
        for i in range(self.cfg.n_grid):
            alpha = i / self.cfg.n_grid
            if self.cfg.duo_scaling:
                s = x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)
            else:
                s = x_mean.pow(alpha)
            s = s.clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            if not torch.isfinite(s).all():
                self.result.guards.append(f"{where}: non-finite scales at alpha {alpha:.2f} skipped")
                continue
            for lin, w0 in zip(group.linears, originals):
                lin.weight.copy_(pseudo_quantize(w0 * s[None, :], g) / s[None, :])
            loss = self.loss(group.inspect, x, targets, kind)
            if not math.isfinite(loss):
                self.result.guards.append(f"{where}: non-finite loss at alpha {alpha:.2f} skipped")
                continue
            if loss < best[0]:
                best = (loss, alpha, s.clone())
        for lin, w0 in zip(group.linears, originals):
            lin.weight.copy_(w0)
        if best[2] is None:
            raise QuantizeError(f"{where}: every candidate scale gave a non-finite loss; the layer overflows in fp32")
        return best[2], best[1]

    @torch.no_grad()
    def search_clip(self, w: torch.Tensor, x: list[torch.Tensor]) -> torch.Tensor:
        """Per (output row, group) the max |w| in [50 %, 100 %] whose int4 output error is lowest."""
        g, n_grid = self.cfg.group_size, self.cfg.n_grid
        n, k = w.shape
        x = torch.cat([c.reshape(-1, k) for c in x])
        x = x[:: max(1, len(x) // self.cfg.clip_tokens)][: self.cfg.clip_tokens].to(self.device)
        xg = x.view(len(x), k // g, g)
        wg = w.view(n, k // g, g)
        best_max = torch.empty(n, k // g, device=w.device, dtype=w.dtype)
        rows = 256 if n % 256 == 0 else 64
        for r in range(0, n, rows):
            wb = wg[r : r + rows]
            org_max = wb.abs().amax(dim=-1)
            org_out = torch.einsum("tgk,bgk->btg", xg, wb)
            min_err = torch.full_like(org_max, math.inf)
            best = org_max.clone()
            for i in range(int(self.cfg.max_shrink * n_grid)):
                max_val = org_max * (1 - i / n_grid)
                m = max_val[..., None]
                cur = pseudo_quantize(torch.maximum(torch.minimum(wb, m), -m).reshape(len(wb), k), g)
                err = (torch.einsum("tgk,bgk->btg", xg, cur.view_as(wb)) - org_out).pow(2).mean(dim=1)
                better = err < min_err
                min_err[better], best[better] = err[better], max_val[better]
            best_max[r : r + rows] = best
        return best_max

    def rtn_loss(self, layer, linears: dict[str, nn.Linear], chunks, fp_out) -> float:
        """The layer's output MSE with every linear rounded to int4 as it is (the baseline AWQ must beat)."""
        originals = {n: m.weight.detach().clone() for n, m in linears.items()}
        with torch.no_grad():
            for m in linears.values():
                m.weight.copy_(pseudo_quantize(m.weight, self.cfg.group_size))
        loss = self.loss(layer, chunks, fp_out, "layer")
        with torch.no_grad():
            for n, m in linears.items():
                m.weight.copy_(originals[n])
        return loss

    def scale(self, prefix: str, layer, feats) -> dict[str, float]:
        """Search every scale group on the fp weights (as llm-awq), then fold them all; returns the alphas."""
        alphas, chosen = {}, []
        for group in scale_groups(self.model_type, layer):
            s, alphas[group.group.prev] = self.search_scale(f"{prefix}.{group.group.prev}", group, feats[group.group.linears[0]])
            chosen.append((group, s))
        for group, s in chosen:
            fold_scales(group.prev, group.linears, s)
            site = group.group.linears[0]
            feats[site] = [c / s.cpu() for c in feats[site]]
            self.result.scales[f"{prefix}.{group.group.prev}"] = ([f"{prefix}.{n}" for n in group.group.linears], s.cpu())
        return alphas

    def clip(self, prefix: str, linears: dict[str, nn.Linear], feats) -> None:
        for name, lin in linears.items():
            if is_clipped(name):
                max_val = self.search_clip(lin.weight.detach(), feats[self.sites[name]])
                apply_clip(lin, max_val)
                self.result.clips[f"{prefix}.{name}"] = max_val.cpu()

    def layer(self, index: int, layer: nn.Module, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Search, fold, clip and round one decoder layer; returns its (rounded) outputs."""
        prefix, clock, alphas = f"model.layers.{index}", Stopwatch(), {}
        with clock.stage("capture"):
            layer.to(self.device)
            linears = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
            feats, fp_out = self.capture(layer, chunks)
            rtn_loss = self.rtn_loss(layer, linears, chunks, fp_out)
        with clock.stage("scale"):
            alphas = self.scale(prefix, layer, feats)
        with clock.stage("clip"):
            if self.cfg.clip:
                self.clip(prefix, linears, feats)
        del feats
        with clock.stage("quantize"):
            for name, lin in linears.items():
                self.result.packed[f"{prefix}.{name}"] = round_linear(lin, self.cfg.group_size)
            out = self.forward(layer, chunks, "layer")
            layer.to("cpu")
        awq_loss = sum((o - f).pow(2).sum().item() for o, f in zip(out, fp_out)) / sum(f.numel() for f in fp_out)
        self.result.layers.append(LayerReport(index, rtn_loss, awq_loss, alphas, clock.seconds))
        return out


def run_awq(llm, model_type: str, samples: list[torch.Tensor], settings: AwqSettings, device: str = "cpu",
            on_layer=None) -> AwqResult:
    """Quantize llm (an HF *ForCausalLM in fp32) in place: its decoder linears end up holding the
    dequantised int4 weights, the norms the folded scales. on_layer(report, n_layers) after each layer."""
    search = _Search(llm, model_type, settings, device)
    chunks = chunk_samples(samples, settings.chunk_tokens)
    layers = llm.model.layers
    for i, layer in enumerate(layers):
        chunks = search.layer(i, layer, chunks)
        if on_layer:
            on_layer(search.result.layers[-1], len(layers))
    llm.model.rotary_emb.to("cpu")
    return search.result


@torch.no_grad()
def rtn_quantize(llm, group_size: int) -> None:
    """Round-to-nearest int4 of every decoder linear, in place: the baseline AWQ is measured against."""
    for layer in llm.model.layers:
        for m in layer.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(pseudo_quantize(m.weight, group_size))


def apply_awq_results(llm, path: Path) -> int:
    """Fold the saved scales and clips into an fp llm (in place); returns the group size to round with."""
    scales, clips, meta = load_awq_results(path)
    for prev, (linears, s) in scales.items():
        fold_scales(llm.get_submodule(prev), [llm.get_submodule(n) for n in linears], s)
    for name, max_val in clips.items():
        apply_clip(llm.get_submodule(name), max_val)
    return int(meta["group_size"])

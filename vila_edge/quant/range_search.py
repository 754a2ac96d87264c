"""Activation ranges searched on the output error, per tensor (as AWQ searches its clip ranges): the int8 threshold t
of an activation X that minimises E||(Q_t(X) - X) W||², over the linears W that read X, on a sample of X's rows.

With G = W Wᵀ (all readers' weights side by side: q/k/v share one input) the error of a candidate is
Σ_rows (E G) ∘ E with E = Q_t(X) - X: one [rows, K] x [K, K] product per candidate, whatever the readers' widths.
A large t keeps the outliers but rounds the typical values coarsely; a small t clips the outliers; the search weighs
both by what the next matmul makes of them, which max, a percentile and entropy do not see.
"""

import numpy as np

from .int8 import QMAX

CLIP_RATIOS = tuple(np.round(np.linspace(1.0, 0.2, 17), 3))  # candidate thresholds, as fractions of max |x|
SAMPLE_ROWS = 512  # rows of each activation kept for the search


class RowSampler:
    """Up to `rows` rows of each watched activation, drawn evenly from every calibration batch."""

    def __init__(self, n_batches: int, rows: int = SAMPLE_ROWS, seed: int = 0):
        self.per_batch = max(1, -(-rows // max(1, n_batches)))
        self.rng = np.random.default_rng(seed)
        self.rows: dict[str, list[np.ndarray]] = {}

    def observe(self, values: dict[str, np.ndarray]) -> None:
        for name, x in values.items():
            if x.ndim == 4:  # a Conv's image input: its rows are patches, not searched here
                continue
            flat = x.reshape(-1, x.shape[-1])
            pick = self.rng.choice(len(flat), size=min(self.per_batch, len(flat)), replace=False)
            self.rows.setdefault(name, []).append(flat[pick].astype(np.float32))

    def sample(self, name: str) -> np.ndarray | None:
        return np.concatenate(self.rows[name]) if name in self.rows else None


def fake_quant(x: np.ndarray, threshold: float, qmax: int = QMAX) -> np.ndarray:
    """x through symmetric per-tensor int8 at `threshold` (QuantizeLinear then DequantizeLinear)."""
    scale = max(threshold, 1e-8) / qmax
    return np.clip(np.round(x / scale), -qmax, qmax) * scale


def output_error(x: np.ndarray, gram: np.ndarray, threshold: float) -> float:
    """Mean over rows of ||(Q_t(x) - x) W||², W Wᵀ = gram."""
    e = fake_quant(x, threshold) - x
    return float(np.einsum("rk,rk->", e @ gram, e) / len(x))


def search_threshold(x: np.ndarray, gram: np.ndarray, amax: float, also: tuple[float, ...] = ()) -> tuple[float, dict]:
    """(the threshold among ratio x amax and `also` with the least output error, the errors by threshold)."""
    candidates = sorted({float(r * amax) for r in CLIP_RATIOS} | {float(t) for t in also if 0 < t <= amax})
    errors = {t: output_error(x, gram, t) for t in candidates}
    return min(errors, key=errors.get), errors


def reader_gram(weights: list[np.ndarray]) -> np.ndarray:
    """W Wᵀ over the readers' weights: MatMul weights [K, N] side by side, or a Conv's [O, I, kh, kw] as [I·kh·kw, O]."""
    mats = [w.reshape(w.shape[0], -1).T if w.ndim == 4 else w for w in weights]
    w = np.concatenate(mats, axis=1).astype(np.float64)
    return (w @ w.T).astype(np.float32)


def outlier_ratio(x: np.ndarray) -> float:
    """How lopsided an activation is across channels: the largest channel max |x| over the median channel's."""
    per_channel = np.abs(x).max(axis=0)
    return float(per_channel.max() / max(float(np.median(per_channel)), 1e-8))

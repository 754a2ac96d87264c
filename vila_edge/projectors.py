"""VILA's projector types as data (no torch): weight keys, downsample factor and token order."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ProjectorSpec:
    downsample: int  # k: k×k neighbouring tokens are concatenated (1: none)
    order: str  # "row" or "column": order of the downsampled tokens; "" when there is no downsample
    first_key: str  # weight of the first Linear: [out, m·k²]
    last_key: str  # weight of the last Linear: [H, in]


PROJECTORS = {
    # VILA1.5 was released with column-major output (pair-column index outer, no trailing
    # permute in flat_square); NVILA-era code adds the permute and is row-major.
    "mlp_downsample": ProjectorSpec(2, "column", "layers.2.weight", "layers.4.weight"),
    "mlp_downsample_2x2_fix": ProjectorSpec(2, "row", "layers.2.weight", "layers.4.weight"),
    "mlp_downsample_3x3_fix": ProjectorSpec(3, "row", "layers.2.weight", "layers.7.weight"),
    "linear": ProjectorSpec(1, "", "layers.weight", "layers.weight"),
    "mlp2x_gelu": ProjectorSpec(1, "", "layers.0.weight", "layers.2.weight"),
}
ORDERS = ("row", "column")


def tokens_after(n_tokens: int, k: int) -> int:
    """Tokens out of a k×k downsample of a square grid of n_tokens (zero-padded up to a multiple of k)."""
    g = round(n_tokens**0.5)
    if k == 1:
        return n_tokens
    if g * g != n_tokens:
        raise ValueError(f"{n_tokens} vision tokens do not form a square grid")
    return (-(-g // k)) ** 2

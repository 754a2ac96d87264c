"""What `quantize` and `eval-ppl` can be asked for, with every default in one place (the CLI builds its
options from these). Plain data: no torch, so building the parser stays light."""

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MediaError, UsageError
from ..formats import TEXT_SUFFIXES
from ..media import media_files
from .int8 import METHODS  # noqa: F401  (activation-range calibration of the int8 vision tower)


@dataclass(frozen=True)
class AwqSettings:
    group_size: int = 128
    w_bit: int = 4
    n_grid: int = 20  # alphas tried per scale group, and shrink steps per clip search
    duo_scaling: bool = False
    clip: bool = True
    max_shrink: float = 0.5  # clip down to 50 % of the group's max |w| ...
    clip_tokens: int = 512  # ... scored on this many sampled tokens
    chunk_tokens: int = 4096  # tokens per forward pass during the search


@dataclass(frozen=True)
class CalibSpec:
    kind: str  # self | text | media
    path: Path | None = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_calib(spec: str) -> CalibSpec:
    """`self`, `text:FILE` or `media:PATH`; the path is checked here, before any work."""
    kind, _, path = spec.partition(":")
    if kind == "self" and not path:
        return CalibSpec("self")
    if kind not in ("text", "media") or not path:
        raise UsageError(f"--calib {spec!r}: expected self, text:FILE or media:PATH")
    p = Path(path)
    if not p.exists():
        raise (MediaError if kind == "media" else UsageError)(f"--calib {spec}: {p} does not exist; check the path")
    if kind == "text" and (not p.is_file() or p.suffix.lower() not in TEXT_SUFFIXES):
        raise UsageError(f"--calib {spec}: expected a .txt or .jsonl file")
    if kind == "media":
        media_files(p)  # an empty folder or an unknown file type fails now
    return CalibSpec(kind, p)


@dataclass(frozen=True)
class VisionQuantOptions:
    # SmoothQuant migration strength; None: each layer's searched on its linears' int8 output error (quant/smoothquant.py)
    alpha: float | None = None
    method: str = "mse"  # ranges searched on their readers' output error; benchmarks/results/vision_w8a8.json
    media: Path | None = None
    n_images: int = 32
    held_out: int = 8
    batch: int = 1  # images per ORT run while calibrating: every watched activation comes back at once
    keep_float: tuple[str, ...] = field(default_factory=tuple)  # node-name regexes left in float
    weight_bits: int = 7  # 7: ±63, no int16 saturation in ONNX Runtime's u8s8 kernels on CPUs without VNNI
    # automatic mixed precision (export/vision_mixed.py): layers kept float until the held-out cosine reaches these
    target_cosine: float = 0.995  # the mean over held-out images
    min_cosine: float = 0.99  # every held-out image
    max_float_layers: int | None = None  # at most this many layers kept float (None: a third of the encoder's; 0: off)


@dataclass(frozen=True)
class PplOptions:
    max_tokens: int = 32768  # of the text, from its start
    seqlen: int = 1024  # tokens per window


@dataclass(frozen=True)
class QuantizeOptions:
    settings: AwqSettings = field(default_factory=AwqSettings)
    calib: CalibSpec = CalibSpec("self")
    n_samples: int = 16
    seqlen: int = 512
    seed: int = 0
    device: str = "auto"  # where each layer is searched: auto is cuda when PyTorch sees one
    conv_mode: str | None = None  # the template media calibration prompts in; recorded in the output
    eval_text: Path | None = None
    eval_tokens: int = PplOptions.max_tokens
    eval_seqlen: int = PplOptions.seqlen
    max_shard_bytes: int = 5 * 2**30
    vision: VisionQuantOptions | None = field(default_factory=VisionQuantOptions)  # None: tower stays as it is

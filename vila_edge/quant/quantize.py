"""`vila-edge quantize`: check everything, calibrate, search, write the checkpoint atomically, report."""

import copy
import json
import math
import re
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..atomic import atomic_dir
from ..checkpoint import SUBFOLDERS, Checkpoint, load_checkpoint, tensor_shapes
from ..errors import UnsupportedError, UsageError
from .awq import AwqSettings, rtn_quantize, run_awq
from .awq_format import RESULTS_FILE, is_awq, load_awq_llm, save_awq_results, write_awq_llm
from .calib import CalibSpec, embed_blocks, media_embeds, media_images, self_token_blocks, text_token_blocks
from .calib import read_documents
from .mappings import SCALE_GROUPS
from .ppl import eval_tokens, gap_ratio, perplexity
from .vision import VisionQuantOptions, quantize_vision

REPORT_FILE = "quant_report.json"
_LINEAR_WEIGHT = re.compile(r"model\.layers\.\d+\.(.+)\.weight$")


@dataclass(frozen=True)
class QuantizeOptions:
    settings: AwqSettings
    calib: CalibSpec
    n_samples: int = 16
    seqlen: int = 512
    seed: int = 0
    device: str = "cpu"
    eval_text: Path | None = None
    eval_tokens: int = 32768
    eval_seqlen: int = 1024
    max_shard_bytes: int = 5 * 2**30
    vision: VisionQuantOptions | None = field(default_factory=VisionQuantOptions)  # None: tower stays as it is


def check_source(ckpt: Checkpoint, settings: AwqSettings) -> None:
    """Everything that can be refused from configs and headers alone, before any weight is read."""
    if settings.w_bit != 4:
        raise UnsupportedError(f"--w-bit {settings.w_bit}: only 4-bit weights are supported yet")
    if is_awq(ckpt.llm_config):
        raise UsageError(f"{ckpt.llm_dir}: already AWQ-quantized; pass the fp16/bf16 source checkpoint")
    model_type = ckpt.llm_config.get("model_type")
    if model_type not in SCALE_GROUPS:
        raise UnsupportedError(f"AWQ has no scale groups for LLM {model_type!r}; supported: {', '.join(SCALE_GROUPS)}")
    if ckpt.is_pickle("llm"):
        return  # no header to read; quantize_groups checks the same when it gets there
    widths = {  # linear -> [out_features, in_features], from the safetensors headers
        name[: -len(".weight")]: shape
        for name, shape in tensor_shapes(ckpt.weights["llm"]).items()
        if _LINEAR_WEIGHT.match(name) and len(shape) == 2
    }
    g = settings.group_size
    common = math.gcd(*(k for _, k in widths.values()))
    for name, (n, k) in widths.items():
        if g <= 0 or k % g:
            sizes = [s for s in (32, 64, 128, 256) if common % s == 0]
            hint = (f"group sizes that divide every layer: {', '.join(map(str, sizes))}" if sizes
                    else f"every in_features is a multiple of {common} only")  # fmt: skip
            raise UsageError(f"--group-size {g} does not divide {name}'s in_features {k}; {hint}")
        if n % 8:
            raise UnsupportedError(f"{name}: out_features {n} is not a multiple of 8, which the GEMM packing needs")


def check_vision(ckpt: Checkpoint) -> None:
    from ..checkpoint import VISION_TOWERS

    if ckpt.s2_scales or ckpt.vision_kind not in VISION_TOWERS:
        what = "an S2 multi-scale tower" if ckpt.s2_scales else f"a {ckpt.vision_kind} tower"
        raise UnsupportedError(f"{ckpt.vision_dir}: W8A8 export of {what} is not supported yet; pass --vision fp16")


def load_fp_llm(ckpt: Checkpoint):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(
        ckpt.llm_dir, dtype=torch.float32, use_safetensors=not ckpt.is_pickle("llm")
    ).eval()


def calibration_samples(ckpt: Checkpoint, opts: QuantizeOptions, log):
    """(fp32 llm on the CPU, tokenizer, samples [L, H]): media needs the whole VLM, text only the LLM."""
    from ..model.vlm import VilaModel, load_tokenizer

    spec = opts.calib
    if spec.kind == "media":
        images = media_images(spec.path, opts.n_samples)
        vila = VilaModel(ckpt, device=opts.device, dtype="float32")
        log(f"calibrating on {len(images)} image(s) from {spec.path}, the model's own answers filling each block")
        samples = media_embeds(vila, images, opts.n_samples, opts.seqlen, opts.seed)
        return vila.llm.cpu(), vila.tokenizer, samples
    tokenizer = load_tokenizer(ckpt)
    llm = load_fp_llm(ckpt)
    if spec.kind == "text":
        blocks = text_token_blocks(tokenizer, read_documents(spec.path), opts.n_samples, opts.seqlen, opts.seed)
    else:
        log(f"sampling {opts.n_samples} x {opts.seqlen} calibration tokens from the model itself (seed {opts.seed})")
        blocks = self_token_blocks(llm.to(opts.device), tokenizer, opts.n_samples, opts.seqlen, opts.seed, opts.device)
    return llm.cpu(), tokenizer, embed_blocks(llm, blocks)


def _copy_unchanged(ckpt: Checkpoint, out: Path) -> None:
    """The top-level files, vision_tower/ and mm_projector/; *_cfg paths point at the new subfolders."""
    for f in ckpt.root.iterdir():
        if f.is_file() and f.name not in ("config.json", RESULTS_FILE, REPORT_FILE):
            shutil.copy2(f, out / f.name)
    config = dict(ckpt.config)
    for name in SUBFOLDERS:
        if isinstance(config.get(f"{name}_cfg"), str):
            config[f"{name}_cfg"] = name
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copytree(ckpt.vision_dir, out / "vision_tower")
    shutil.copytree(ckpt.projector_dir, out / "mm_projector")


class _Progress:
    """A bar over decoder layers (ETA from tqdm) with the last layer's output loss before and after."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def __call__(self, report, n_layers: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=n_layers, desc="AWQ", unit="layer", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(f"layer {report.index}: loss RTN {report.rtn_loss:.3g} -> AWQ {report.awq_loss:.3g}")
        self.bar.update(1)
        if self.bar.n == n_layers:
            self.bar.close()


def quantize_checkpoint(src: str | Path, out: str | Path, opts: QuantizeOptions, overwrite: bool = False,
                        log=print, progress: bool = True, allow_pickle: bool = False) -> dict:  # fmt: skip
    """AWQ-quantize src's LLM into out (atomically); returns the report that is also written there."""
    t_start = time.perf_counter()
    out = Path(out)
    ckpt = load_checkpoint(src, allow_pickle=allow_pickle)
    check_source(ckpt, opts.settings)
    if opts.vision is not None:
        check_vision(ckpt)
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: already exists; remove it, pass --overwrite, or choose another output folder")
    if opts.eval_text is not None and not Path(opts.eval_text).is_file():
        raise UsageError(f"--eval-text {opts.eval_text}: no such file")
    seconds = {}

    t = time.perf_counter()
    llm, tokenizer, samples = calibration_samples(ckpt, opts, log)
    seconds["calibration"] = time.perf_counter() - t
    model_type = ckpt.llm_config["model_type"]

    ppl = None
    if opts.eval_text is not None:
        t = time.perf_counter()
        seqlen = min(opts.eval_seqlen, ckpt.model_max_length)
        windows = eval_tokens(tokenizer, Path(opts.eval_text), opts.eval_tokens, seqlen)
        ppl = {"text": str(opts.eval_text), "tokens": windows.numel(), "seqlen": seqlen,
               "fp": perplexity(llm, windows, opts.device)}  # fmt: skip
        rtn = copy.deepcopy(llm)
        rtn_quantize(rtn, opts.settings.group_size)
        ppl["rtn"] = perplexity(rtn, windows, opts.device)
        del rtn
        seconds["eval"] = time.perf_counter() - t

    t = time.perf_counter()
    result = run_awq(llm, model_type, samples, opts.settings, opts.device, on_layer=_Progress(progress))
    seconds["search"] = time.perf_counter() - t
    for stage in ("capture", "scale", "clip", "quantize"):
        seconds[f"search.{stage}"] = sum(layer.seconds[stage] for layer in result.layers)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        t = time.perf_counter()
        _copy_unchanged(ckpt, tmp)
        write_awq_llm(tmp / "llm", ckpt.llm_dir, llm, result.packed, opts.settings.group_size, opts.max_shard_bytes)
        save_awq_results(tmp / RESULTS_FILE, result, opts.settings)
        seconds["write"] = time.perf_counter() - t
        vision = None
        if opts.vision is not None:
            t = time.perf_counter()
            vision = quantize_vision(ckpt, tmp / "vision", opts.vision, log)
            seconds["vision"] = time.perf_counter() - t
            cos = vision["held_out"]["cosine_mean"]
            if cos < 0.99:
                warnings.warn(f"the W8A8 vision tower's image embeddings reach cosine {cos:.4f} against fp32 on "
                              "held-out images (below 0.99); see vision/calibration.json, or pass --vision fp16")  # fmt: skip
        if ppl is not None:  # measured on what was written, read back as any AutoAWQ reader would
            t = time.perf_counter()
            written = load_checkpoint(tmp)
            awq = load_awq_llm(written.llm_dir, torch.float32, written.weights["llm"])
            ppl["awq"] = perplexity(awq, windows, opts.device)
            ppl["awq_gap_over_rtn_gap"] = gap_ratio(ppl["fp"], ppl["rtn"], ppl["awq"])
            seconds["eval"] += time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t_start
        report = {
            "vila_edge": __version__,
            "source": str(Path(src).resolve()),
            "method": "awq",
            "settings": asdict(opts.settings),
            "calibration": {"source": str(opts.calib), "n_samples": len(samples), "seqlen": opts.seqlen,
                            "tokens": sum(len(s) for s in samples), "seed": opts.seed},  # fmt: skip
            "device": opts.device,
            "torch_threads": torch.get_num_threads(),
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "perplexity": ppl,
            "vision": None if vision is None else {k: vision[k] for k in (
                "media", "calibration_images", "method", "smooth_alpha", "weights", "quantized_nodes", "held_out")},
            "guards": result.guards,
            "layers": [asdict(layer) for layer in result.layers],
        }
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report

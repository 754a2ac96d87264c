"""`vila-edge quantize`: check everything, calibrate, search, write the checkpoint atomically, report."""

import copy
import json
import math
import re
import shutil
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from ..arch import VISION_TOWERS, get_llm
from ..atomic import atomic_dir
from ..awq_checkpoint import is_awq, load_awq_llm, save_awq_results, write_awq_llm
from ..checkpoint import SUBFOLDERS, Checkpoint, load_checkpoint
from ..conversation import resolve_conv_mode
from ..errors import UnsupportedError, UsageError
from ..export.vision_w8a8 import quantize_vision
from ..formats import AWQ_RESULTS_FILE, QUANT_REPORT_FILE, VISION_DIR, VISION_W8A8_FILE
from ..llamavid_format import ATT_DIR, write_att_folder
from ..llm_awq import check_dump, is_dump, plan_dump, read_dump, write_dump_llm
from ..media import media_images
from ..model.vlm import VilaModel, load_llm, load_tokenizer, resolve_device
from ..quant.awq import rtn_quantize, run_awq
from ..quant.calib import embed_blocks, media_embeds, read_documents, self_token_blocks, text_token_blocks
from ..quant.options import AwqSettings, QuantizeOptions
from ..quant.ppl import eval_tokens, gap_ratio, perplexity
from ..timing import Stopwatch
from .convert_llava import write_part_tensors, write_vila_parts

_LINEAR_WEIGHT = re.compile(r"model\.layers\.\d+\.(.+)\.weight$")


def check_source(ckpt: Checkpoint, settings: AwqSettings) -> None:
    """Everything that can be refused from configs and headers alone, before any weight is read."""
    if settings.w_bit != 4:
        raise UnsupportedError(f"--w-bit {settings.w_bit}: only 4-bit weights are supported yet")
    if is_awq(ckpt.llm_config):
        raise UsageError(f"{ckpt.llm_dir}: already AWQ-quantized; pass the fp16/bf16 source checkpoint")
    get_llm(ckpt.llm_config.get("model_type"), str(ckpt.llm_dir / "config.json"))
    if ckpt.is_pickle("llm"):
        return  # no header to read; quantize_groups checks the same when it gets there
    widths = {  # linear -> [out_features, in_features], from the safetensors headers
        name[: -len(".weight")]: shape
        for name, shape in ckpt.shapes("llm").items()
        if _LINEAR_WEIGHT.match(name) and len(shape) == 2
    }
    g = settings.group_size
    common = math.gcd(*(k for _, k in widths.values()))
    for name, (n, k) in widths.items():
        if g <= 0 or k % g:
            sizes = [s for s in (32, 64, 128, 256) if common % s == 0]
            hint = (f"group sizes that divide every layer: {', '.join(map(str, sizes))}" if sizes
                    else f"every in_features is a multiple of {common} only")
            raise UsageError(f"--group-size {g} does not divide {name}'s in_features {k}; {hint}")
        if n % 8:
            raise UnsupportedError(f"{name}: out_features {n} is not a multiple of 8, which the GEMM packing needs")


def check_vision(ckpt: Checkpoint) -> None:
    if ckpt.vision_kind not in VISION_TOWERS:
        raise UnsupportedError(f"{ckpt.vision_dir}: W8A8 export of a {ckpt.vision_kind} tower is not supported yet; "
                               "pass --vision none")


def load_fp_llm(ckpt: Checkpoint):
    return load_llm(ckpt, torch.float32)


def calibration_samples(ckpt: Checkpoint, opts: QuantizeOptions, device: str, log, progress: bool = True):
    """(fp32 llm on the CPU, tokenizer, samples [L, H], the conv mode of media prompts): media needs the whole
    VLM, text only the LLM."""
    spec = opts.calib
    if spec.kind == "media":
        images = media_images(spec.path, opts.n_samples)
        vila = VilaModel(ckpt, device=device, dtype="float32")
        log(f"calibrating on {len(images)} image(s) from {spec.path}, the model's own answers filling each block")
        samples, conv_mode = media_embeds(vila, images, opts.n_samples, opts.seqlen, opts.seed, opts.conv_mode, progress)
        return vila.llm.cpu(), vila.tokenizer, samples, conv_mode
    tokenizer = load_tokenizer(ckpt)
    llm = load_fp_llm(ckpt)
    if spec.kind == "text":
        blocks = text_token_blocks(tokenizer, read_documents(spec.path), opts.n_samples, opts.seqlen, opts.seed)
    else:
        log(f"sampling {opts.n_samples} x {opts.seqlen} calibration tokens from the model itself (seed {opts.seed})")
        blocks = self_token_blocks(llm.to(device), tokenizer, opts.n_samples, opts.seqlen, opts.seed, device,
                                   progress=progress)
    return llm.cpu(), tokenizer, embed_blocks(llm, blocks), opts.conv_mode


def _copy_unchanged(ckpt: Checkpoint, out: Path, conv_mode: str | None) -> None:
    """The top-level files, vision_tower/ and mm_projector/; *_cfg paths point at the new subfolders, and a
    conv mode chosen for calibration is recorded, so every later command prompts the same way. A folder read in
    place (LLaVA-1.5, LLaMA-VID) gets its VILA-layout parts written instead, in safetensors (LLaMA-VID's vlm_att/ too,
    with the Q-Former's BERT config and tokenizer)."""
    for f in ckpt.root.iterdir() if ckpt.layout == "vila" else ():
        if f.is_file() and f.name not in ("config.json", AWQ_RESULTS_FILE, QUANT_REPORT_FILE):
            shutil.copy2(f, out / f.name)
    config = dict(ckpt.config)
    if conv_mode:
        config["conv_mode"] = conv_mode
    for name in SUBFOLDERS:
        if isinstance(config.get(f"{name}_cfg"), str):
            config[f"{name}_cfg"] = name
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if ckpt.layout != "vila":
        write_vila_parts(ckpt, out, ("vision_tower", "mm_projector"))
        if ckpt.llamavid is not None:
            write_att_folder(ckpt.llamavid, out / ATT_DIR)
            write_part_tensors(ckpt, ATT_DIR, out, progress=False)
        return
    shutil.copytree(ckpt.vision_dir, out / "vision_tower")
    shutil.copytree(ckpt.projector_dir, out / "mm_projector")
    if ckpt.llamavid is not None:  # a VILA-layout LLaMA-VID: its attention modules, BERT config and vocabulary
        shutil.copytree(ckpt.root / ATT_DIR, out / ATT_DIR)


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


def check_request(ckpt: Checkpoint, out: Path, opts: QuantizeOptions, overwrite: bool) -> None:
    """Everything refusable before any weight is read."""
    check_source(ckpt, opts.settings)
    if opts.vision is not None:
        check_vision(ckpt)
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: already exists; remove it, pass --overwrite, or choose another output folder")
    if opts.eval_text is not None and not Path(opts.eval_text).is_file():
        raise UsageError(f"--eval-text {opts.eval_text}: no such file")
    if opts.n_samples < 1 or opts.seqlen < 16:
        raise UsageError("--n-samples must be at least 1 and --seqlen at least 16")


def baseline_perplexity(ckpt: Checkpoint, llm, tokenizer, opts: QuantizeOptions, device: str):
    """(fp and RTN perplexity on --eval-text, the scored windows)."""
    seqlen = min(opts.eval_seqlen, ckpt.model_max_length)
    windows = eval_tokens(tokenizer, Path(opts.eval_text), opts.eval_tokens, seqlen)
    ppl = {"text": str(opts.eval_text), "tokens": windows.numel(), "seqlen": seqlen, "fp": perplexity(llm, windows, device)}
    rtn = copy.deepcopy(llm)
    rtn_quantize(rtn, opts.settings.group_size)
    ppl["rtn"] = perplexity(rtn, windows, device)
    return ppl, windows


def written_perplexity(folder: Path, ppl: dict, windows, device: str) -> None:
    """AWQ perplexity of what was written, read back as any AutoAWQ reader would."""
    written = load_checkpoint(folder)
    awq = load_awq_llm(written.llm_dir, torch.float32, written.weights["llm"])
    ppl["awq"] = perplexity(awq, windows, device)
    ppl["awq_gap_over_rtn_gap"] = gap_ratio(ppl["fp"], ppl["rtn"], ppl["awq"])


def write_vision(ckpt: Checkpoint, folder: Path, opts: QuantizeOptions, log, progress: bool) -> dict:
    vision = quantize_vision(ckpt, folder, opts.vision, log, progress=progress)
    held = vision["held_out"]
    if held["cosine_mean"] < 0.995 or held["cosine_min"] < 0.99:
        worst = sorted(vision["layers"], key=lambda r: -r["own_drop"])[:3]
        named = ", ".join(f"{r['layer']} ({r['precision']}, own drop {r['own_drop']:.4f}, outliers "
                          f"{r['outlier_ratio']:g}x)" for r in worst)
        dynamic = vision["cpu_dynamic"]["held_out"]
        warnings.warn(f"the static W8A8 vision tower (TensorRT's, {VISION_W8A8_FILE}) reaches cosine "
                      f"{held['cosine_mean']:.4f} (min {held['cosine_min']:.4f}) against fp32 on held-out images, below "
                      f"0.995 (min 0.99), with layers {vision['layers_kept_float'] or 'none'} kept float; the worst "
                      f"layers: {named}. The cpu engine's per-token dynamic one reaches {dynamic['cosine_mean']:.4f} (min "
                      f"{dynamic['cosine_min']:.4f}). See vision/calibration.json; try --calib-media with real frames, "
                      "--vision-max-float-layers N, or build the GPU engine with --vision fp16")
    summary = {k: vision[k] for k in ("media", "calibration_images", "method", "smooth_alpha", "weights",
                                      "quantized_nodes", "int8_share", "layers_kept_float", "held_out", "tensorrt_fp16")}
    dynamic = vision["cpu_dynamic"]
    return summary | {"cpu_dynamic": {k: dynamic[k] for k in ("quantized_matmuls", "layers_kept_float", "held_out")}}


def quantize_checkpoint(src: str | Path, out: str | Path, opts: QuantizeOptions, overwrite: bool = False,
                        log=print, progress: bool = True, allow_pickle: bool = False, **llava) -> dict:
    """AWQ-quantize src's LLM into out (atomically); returns the report that is also written there:
    check, calibrate, baseline, search, write, (vision), (perplexity of what was written), report."""
    out, clock = Path(out), Stopwatch()
    ckpt = load_checkpoint(src, allow_pickle, llm_awq=True, **llava)  # llava: vision_tower, hf_processor (LLaVA-1.5)
    if is_dump(ckpt.weights["llm"][0]):  # a VILA1.5-*-AWQ folder: its published int4 weights, not a search
        return import_llm_awq(ckpt, out, opts, overwrite, log, progress)
    check_request(ckpt, out, opts, overwrite)
    device = resolve_device(opts.device)
    with clock.stage("calibration"):
        llm, tokenizer, samples, conv_mode = calibration_samples(ckpt, opts, device, log, progress)
    ppl, windows = None, None
    if opts.eval_text is not None:
        with clock.stage("eval"):
            ppl, windows = baseline_perplexity(ckpt, llm, tokenizer, opts, device)
    with clock.stage("search"):
        result = run_awq(llm, ckpt.llm_config["model_type"], samples, opts.settings, device, on_layer=_Progress(progress))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with clock.stage("write"):
            _copy_unchanged(ckpt, tmp, conv_mode)
            write_awq_llm(tmp / "llm", ckpt.llm_dir, llm, result.packed, opts.settings.group_size, opts.max_shard_bytes,
                          config=ckpt.llm_config)
            save_awq_results(tmp / AWQ_RESULTS_FILE, result, opts.settings)
        vision = None
        if opts.vision is not None:
            with clock.stage("vision"):
                vision = write_vision(ckpt, tmp / VISION_DIR, opts, log, progress)
        if ppl is not None:
            with clock.stage("eval"):
                written_perplexity(tmp, ppl, windows, device)
        report = {
            "vila_edge": __version__,
            "source": str(Path(src).resolve()),
            "method": "awq",
            "settings": asdict(opts.settings),
            "calibration": {"source": str(opts.calib), "n_samples": len(samples), "seqlen": opts.seqlen,
                            "tokens": sum(len(s) for s in samples), "seed": opts.seed},
            "conv_mode": conv_mode,  # the template media calibration prompted in (recorded in config.json)
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "seconds": clock.rounded() | search_stages(result),
            "perplexity": ppl,
            "vision": vision,
            "guards": result.guards,
            "layers": [asdict(layer) for layer in result.layers],
        }
        (tmp / QUANT_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _recorded_conv_mode(ckpt: Checkpoint, flag: str | None) -> str | None:
    """--conv-mode, else the mode the source's name gives (VILA1.5-3b-AWQ: vicuna_v1), so OUT prompts the same under
    any name; None where the source records its own (config.json is copied) or its name says nothing."""
    if flag or ckpt.recorded_conv_mode():
        return flag
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mode, where = resolve_conv_mode(ckpt, None)
    return mode if where.startswith("checkpoint name") else None


def check_import(ckpt: Checkpoint, out: Path, opts: QuantizeOptions, overwrite: bool, group_size: int) -> list[str]:
    """What an llm-awq import refuses before reading the dump: options that ask for a search it does not run. The
    search settings (--group-size, --w-bit, ...) do not apply: the dump's quantization is kept; returns that note."""
    if opts.calib.kind == "text" or opts.eval_text is not None:
        raise UsageError(f"{ckpt.weights['llm'][0]}: the LLM's int4 weights are imported, not searched, so --calib "
                         "text:FILE and --eval-text do not apply (score OUT with vila-edge eval-ppl); --calib-media "
                         "still calibrates the vision tower")
    if opts.vision is not None:
        check_vision(ckpt)
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: already exists; remove it, pass --overwrite, or choose another output folder")
    if opts.settings.group_size != group_size or opts.settings.w_bit != 4:
        return [f"{ckpt.weights['llm'][0].name} is int4 g{group_size}, which the import keeps (--group-size and "
                "--w-bit apply to a search)"]
    return []


def import_llm_awq(ckpt: Checkpoint, out: Path, opts: QuantizeOptions, overwrite: bool, log, progress: bool) -> dict:
    """A VILA1.5-*-AWQ folder: llm-awq's int4 weights checked against llm/config.json and repacked (llm_awq.py), the
    vision tower quantized as for any checkpoint; written atomically, and loaded before it is kept."""
    clock, dump = Stopwatch(), ckpt.weights["llm"][0]
    plan = plan_dump(dump, ckpt.llm_config)
    notes = check_import(ckpt, out, opts, overwrite, plan.group_size)
    with clock.stage("read"):
        state = read_dump(dump)
        check_dump(state, plan)
    conv_mode = _recorded_conv_mode(ckpt, opts.conv_mode)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with clock.stage("write"):
            _copy_unchanged(ckpt, tmp, conv_mode)
            log(f"repacking {len(plan.linears)} linears of {dump.name} into the AutoAWQ GEMM layout (no AWQ search)")
            linears = write_dump_llm(tmp / "llm", ckpt.llm_dir, state, plan, opts.max_shard_bytes, progress)
        vision = None
        if opts.vision is not None:
            with clock.stage("vision"):
                vision = write_vision(ckpt, tmp / VISION_DIR, opts, log, progress)
        load_checkpoint(tmp)  # the result loads as any quantized checkpoint, or nothing is written
        report = {
            "vila_edge": __version__,
            "source": str(ckpt.root.resolve()),
            "method": "llm-awq import",
            "dump": dump.name,
            "settings": {"w_bit": 4, "group_size": plan.group_size},
            "linears": linears,
            "conv_mode": conv_mode,
            "seconds": clock.rounded(),
            "vision": vision,
            "guards": notes,
        }
        (tmp / QUANT_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def search_stages(result) -> dict[str, float]:
    """Where the search spent its time, summed over layers (`search.capture`, ...)."""
    stages = ("capture", "scale", "clip", "quantize")
    return {f"search.{s}": round(sum(layer.seconds[s] for layer in result.layers), 2) for s in stages}


def ppl_line(ppl: dict) -> str:
    rows = [f"{k} {ppl[k]:.3f}" for k in ("fp", "rtn", "awq") if k in ppl]
    line = f"perplexity on {ppl['tokens']} tokens of {ppl['text']}: " + ", ".join(rows)
    if "awq" in ppl and "rtn" in ppl:
        line += f" (AWQ's gap to fp is {100 * ppl['awq_gap_over_rtn_gap']:.0f} % of RTN's)"
    return line


def summary_lines(report: dict, out: Path) -> list[str]:
    """What `quantize` prints when it is done."""
    if report["method"] == "llm-awq import":
        lines = [f"wrote {out}: llm-awq's int4 g{report['settings']['group_size']} weights from {report['dump']}, "
                 f"{report['linears']} linears repacked into the AutoAWQ GEMM layout (no AWQ search)"]
    else:
        layers = report["layers"]
        rtn = sum(r["rtn_loss"] for r in layers) / len(layers)
        awq = sum(r["awq_loss"] for r in layers) / len(layers)
        calib = report["calibration"]
        lines = [f"wrote {out}: AWQ int4 g{report['settings']['group_size']} ({calib['tokens']} calibration tokens "
                 f"from {calib['source']}); mean layer-output MSE RTN {rtn:.4g} -> AWQ {awq:.4g}"]
    lines.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items() if "." not in k))
    if report.get("perplexity"):
        lines.append(ppl_line(report["perplexity"]))
    if report["vision"]:
        v = report["vision"]
        lines.append(f"vision W8A8 ({v['quantized_nodes']} quantized MatMul/Conv, {v['method']} ranges from "
                     f"{v['calibration_images']} {v['media']} images, SmoothQuant alpha {v['smooth_alpha']}): cosine "
                     f"{v['held_out']['cosine_mean']:.4f} (min {v['held_out']['cosine_min']:.4f}) to fp32 on "
                     f"{v['held_out']['images']} held-out images; {100 * v['int8_share']:.0f} % of the MatMul/Conv "
                     f"int8" + (f", layers {v['layers_kept_float']} kept float" if v["layers_kept_float"] else ""))
        if v.get("cpu_dynamic"):
            d = v["cpu_dynamic"]
            lines.append(f"vision per-token dynamic int8 (the cpu engine's): cosine {d['held_out']['cosine_mean']:.4f} "
                         f"(min {d['held_out']['cosine_min']:.4f}), {d['quantized_matmuls']} MatMuls int8"
                         + (f", layers {d['layers_kept_float']} kept float" if d["layers_kept_float"] else ""))
    return lines

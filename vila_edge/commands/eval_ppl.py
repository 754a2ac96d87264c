"""`vila-edge eval-ppl`: perplexity of the fp LLM, its RTN int4 and an AWQ int4 on a text the quantizer never saw."""

from pathlib import Path

import torch

from ..awq_checkpoint import is_awq, load_awq_llm
from ..checkpoint import load_checkpoint
from ..errors import UsageError
from ..model.vlm import load_tokenizer, resolve_device
from ..quant.awq import rtn_quantize
from ..quant.options import AwqSettings, PplOptions
from ..quant.ppl import eval_tokens, gap_ratio, perplexity
from .quantize import load_fp_llm


def eval_ppl(source: str, text: str, opts: PplOptions, awq_path: str | None = None, group_size: int | None = None,
             device: str = "auto", allow_pickle: bool = False, **llava) -> dict:
    """fp and RTN (group_size: default --awq's, else AwqSettings') and AWQ perplexity; an AWQ source is scored alone."""
    device = resolve_device(device)
    ckpt = load_checkpoint(source, allow_pickle, **llava)  # llava: vision_tower, hf_processor
    awq = load_checkpoint(awq_path) if awq_path else None
    if awq is not None and not is_awq(awq.llm_config):
        raise UsageError(f"--awq {awq_path}: its llm/ is not AWQ-quantized")
    seqlen = min(opts.seqlen, ckpt.model_max_length)
    windows = eval_tokens(load_tokenizer(ckpt), Path(text), opts.max_tokens, seqlen)
    ppl = {"text": text, "tokens": windows.numel(), "seqlen": seqlen}
    measure = lambda model: perplexity(model, windows, device)  # noqa: E731
    if is_awq(ckpt.llm_config):
        ppl["awq"] = measure(load_awq_llm(ckpt.llm_dir, torch.float32, ckpt.weights["llm"]))
        return ppl
    llm = load_fp_llm(ckpt)
    ppl["fp"] = measure(llm)
    group_size = group_size or (awq.llm_config["quantization_config"]["group_size"] if awq else AwqSettings.group_size)
    rtn_quantize(llm, group_size)
    ppl["rtn"], ppl["rtn_group_size"] = measure(llm), group_size
    del llm
    if awq is not None:
        ppl["awq"] = measure(load_awq_llm(awq.llm_dir, torch.float32, awq.weights["llm"]))
        ppl["awq_gap_over_rtn_gap"] = gap_ratio(ppl["fp"], ppl["rtn"], ppl["awq"])
    return ppl

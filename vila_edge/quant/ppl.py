"""Perplexity on a text file, llm-awq's protocol: documents tokenised and concatenated, cut into
non-overlapping windows of seqlen tokens, exp of the mean next-token NLL over all of them."""

import math
from pathlib import Path

import torch

from ..errors import UsageError
from .calib import read_documents


def eval_tokens(tokenizer, path: Path, max_tokens: int, seqlen: int) -> torch.Tensor:
    """[n_windows, seqlen] token ids from the start of the file (no shuffling: every model sees the same text)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such text file for perplexity; pass a .txt or .jsonl file")
    ids: list[int] = []
    for doc in read_documents(path):
        ids += tokenizer(doc).input_ids
        if len(ids) >= max_tokens:
            break
    n = min(len(ids), max_tokens) // seqlen
    if n == 0:
        raise UsageError(f"{path}: {len(ids)} tokens, fewer than one window of {seqlen}; use a longer text")
    return torch.tensor(ids[: n * seqlen]).view(n, seqlen)


@torch.inference_mode()
def perplexity(llm, windows: torch.Tensor, device: str = "cpu") -> float:
    """Scored on `device`; the model goes back to the CPU afterwards (models wait there between stages)."""
    llm.to(device)
    nll, count = 0.0, 0
    for ids in windows:
        ids = ids[None].to(device)
        logits = llm(input_ids=ids).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    llm.cpu()
    return math.exp(nll / count)


def gap_ratio(fp: float, rtn: float, awq: float) -> float:
    """AWQ's perplexity gap to fp as a fraction of RTN's (the AWQ paper's Llama-2-7B: 0.5)."""
    return (awq - fp) / max(rtn - fp, 1e-12)

"""Calibration sequences for the AWQ search, all offline: the model's own samples, a text file, or media.

Every source ends as a list of input embeddings [L, H] (float32, CPU): what the first decoder
layer sees. Text becomes token embeddings; media becomes real captioning prompts with image
tokens from the vision tower and projector, followed by the model's own answer.
"""

import json
import random
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from ..caption import Captioner
from ..errors import QuantizeError, UsageError
from ..generate import SamplingParams

# Questions a captioning user asks; media samples cycle through them.
MEDIA_QUESTIONS = (
    "Describe the image in detail.",
    "What is happening in this picture?",
    "Write a short caption for this image.",
    "What objects can you see, and where are they?",
    "Is there anything unusual in this scene?",
)


# ---- text -------------------------------------------------------------------------------------


def read_documents(path: Path) -> list[str]:
    """A .jsonl file gives one document per line ({"text": ...} or a string); a text file one per paragraph."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() != ".jsonl":
        return [p.strip() for p in raw.split("\n\n") if p.strip()]
    docs = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{n}: not JSON ({e.msg}); each line must be {{\"text\": ...}} or a string") from None
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise UsageError(f"{path}:{n}: no \"text\" string in this line")
        docs.append(text)
    return docs


def text_token_blocks(tokenizer, docs: list[str], n_samples: int, seqlen: int, seed: int) -> list[list[int]]:
    """llm-awq's recipe: shuffle documents (seeded), tokenise each (with BOS where the tokenizer adds one),
    concatenate, cut into blocks of seqlen tokens."""
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc).input_ids
        if len(ids) >= n_samples * seqlen:
            break
    blocks = [ids[i : i + seqlen] for i in range(0, len(ids) - seqlen + 1, seqlen)][:n_samples]
    if not blocks:
        raise UsageError(f"the calibration text has {len(ids)} tokens, fewer than one --seqlen block of {seqlen}")
    return blocks


# ---- the model's own text ---------------------------------------------------------------------


@torch.inference_mode()
def self_token_blocks(llm, tokenizer, n_samples: int, seqlen: int, seed: int, device: str, batch: int = 16,
                      progress: bool = True):
    """Sequences sampled from the fp model (temperature 1, seeded), starting from BOS: data-free
    calibration whose statistics are the model's own (as LLM-QAT's self-generated data)."""
    torch.manual_seed(seed)
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else [tokenizer.eos_token_id]
    if not torch.isfinite(llm(torch.tensor([start], device=device)).logits).all():
        raise QuantizeError(
            "the fp model cannot sample its own calibration text: its logits are not finite. "
            "The LLM weights hold NaN/inf (a corrupted download?); check them, or calibrate with --calib text:FILE "
            "to find the first layer at fault"
        )
    blocks, steps = [], seqlen - len(start)
    with tqdm(total=-(-n_samples // batch) * steps, desc="self-calibration", unit="step", leave=False,
              disable=not progress) as bar:
        for i in range(0, n_samples, batch):
            b = min(batch, n_samples - i)
            prompt = torch.tensor([start] * b, device=device)
            out = llm.generate(
                prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=steps, min_new_tokens=steps,  # EOS suppressed: full blocks
                pad_token_id=tokenizer.eos_token_id, stopping_criteria=StoppingCriteriaList([_Ticks(bar)]),
            )
            blocks += out.cpu().tolist()
    return blocks


class _Ticks(StoppingCriteria):
    """A stopping criterion that never stops: it moves the progress bar one decode step."""

    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def __call__(self, input_ids, scores, **kwargs):
        self.bar.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


# ---- media ------------------------------------------------------------------------------------


def media_embeds(vila, images: list, n_samples: int, seqlen: int, seed: int, conv_mode: str | None = None,
                 progress: bool = True):
    """(one captioning exchange per sample, the conv mode they are in): the checkpoint's template (or conv_mode),
    one image, a question, and the model's own answer (sampled, seeded) filling the block up to seqlen tokens."""
    captioner = Captioner(vila.info, vila, conv_mode)
    samples = []
    for i in tqdm(range(n_samples), desc="media calibration", unit="sample", leave=False, disable=not progress):
        image, question = images[i % len(images)], MEDIA_QUESTIONS[i % len(MEDIA_QUESTIONS)]
        # tiled as captioning tiles it, LLaMA-VID's frames conditioned on the question: the real image tokens
        encoded = captioner.encode([image], question)
        prompt = captioner.prompt_ids(question, 1, encoded.tiles_per_image)
        room = max(16, seqlen - len(prompt) - sum(len(b) for b in encoded.blocks))
        answer = captioner([image], question, SamplingParams(temperature=0.7, max_new_tokens=room, seed=seed + i))
        samples.append(vila.splice(prompt + answer.token_ids, encoded.blocks).float().cpu())
    return samples, captioner.conv_mode


def embed_blocks(llm, blocks: list[list[int]]) -> list[torch.Tensor]:
    table = llm.get_input_embeddings()
    with torch.inference_mode():
        return [table(torch.tensor(b, device=table.weight.device)).float().cpu() for b in blocks]

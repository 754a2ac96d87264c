"""Calibration sequences for the AWQ search, all offline: the model's own samples, a text file, or media.

Every source ends as a list of input embeddings [L, H] (float32, CPU): what the first decoder
layer sees. Text becomes token embeddings; media becomes real captioning prompts with image
tokens from the vision tower and projector, followed by the model's own answer.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MediaError, UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
TEXT_SUFFIXES = {".txt", ".jsonl", ".md"}
# Questions a captioning user asks; media samples cycle through them.
MEDIA_QUESTIONS = (
    "Describe the image in detail.",
    "What is happening in this picture?",
    "Write a short caption for this image.",
    "What objects can you see, and where are they?",
    "Is there anything unusual in this scene?",
)


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


def media_files(path: Path) -> list[Path]:
    """An image, a video, or a folder of images (sorted)."""
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MediaError(f"{path}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files
    if path.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
        raise MediaError(f"{path}: not an image or a video by its extension; pass an image, a video or a folder")
    return [path]


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
def self_token_blocks(llm, tokenizer, n_samples: int, seqlen: int, seed: int, device: str, batch: int = 16):
    """Sequences sampled from the fp model (temperature 1, seeded), starting from BOS: data-free
    calibration whose statistics are the model's own (as LLM-QAT's self-generated data)."""
    from .awq import QuantizeError

    torch.manual_seed(seed)
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else [tokenizer.eos_token_id]
    if not torch.isfinite(llm(torch.tensor([start], device=device)).logits).all():
        raise QuantizeError(
            "the fp model cannot sample its own calibration text: its logits are not finite. "
            "The LLM weights hold NaN/inf (a corrupted download?); check them, or calibrate with --calib text:FILE "
            "to find the first layer at fault"
        )
    blocks = []
    for i in range(0, n_samples, batch):
        b = min(batch, n_samples - i)
        prompt = torch.tensor([start] * b, device=device)
        out = llm.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=seqlen - len(start), min_new_tokens=seqlen - len(start),  # EOS suppressed: full blocks
            pad_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        blocks += out.cpu().tolist()
    return blocks


# ---- media ------------------------------------------------------------------------------------


def media_images(path: Path, n: int) -> list:
    """Up to n images: the files of a folder (or the one image), or n frames spread over a video."""
    from ..media import load_image, load_video_frames

    files = media_files(path)
    if len(files) == 1 and files[0].suffix.lower() in VIDEO_SUFFIXES:
        return load_video_frames(files[0], n)
    return [load_image(f) for f in files[:n]]


def media_embeds(vila, images: list, n_samples: int, seqlen: int, seed: int) -> list[torch.Tensor]:
    """One captioning exchange per sample: the checkpoint's template, one image, a question, and the
    model's own answer (sampled, seeded) filling the block up to seqlen tokens."""
    from ..caption import Captioner
    from ..generate import SamplingParams

    captioner = Captioner(vila.ckpt, vila)
    samples = []
    for i in range(n_samples):
        image, question = images[i % len(images)], MEDIA_QUESTIONS[i % len(MEDIA_QUESTIONS)]
        prompt = captioner.prompt_ids(question, 1)
        room = max(16, seqlen - len(prompt) - vila.ckpt.tokens_per_image)
        answer = captioner([image], question, SamplingParams(temperature=0.7, max_new_tokens=room, seed=seed + i))
        pixels = captioner.pixels([image])
        samples.append(vila.splice(prompt + answer.token_ids, vila.encode_images(pixels)).float().cpu())
    return samples


def embed_blocks(llm, blocks: list[list[int]]) -> list[torch.Tensor]:
    table = llm.get_input_embeddings()
    with torch.inference_mode():
        return [table(torch.tensor(b, device=table.weight.device)).float().cpu() for b in blocks]

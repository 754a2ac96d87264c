"""Prompt text -> token ids with IMAGE_TOKEN_INDEX where image blocks go (no torch)."""

from . import IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from .errors import UsageError


def user_turn(question: str, n_images: int, image_text: str, tiles: list[int] | None = None) -> str:
    """VILA's user turn: one image placeholder per image or frame before the question, unless the question
    already places exactly that many `<image>` tags itself. `tiles`: an image NVILA-Lite cut into k tiles takes
    `<image>\n` k times in place of its one placeholder or tag (VILA HEAD's generate_content)."""
    tiles = tiles or [0] * n_images
    n_tags = question.count(IMAGE_TOKEN)
    if n_tags not in (0, n_images):
        raise UsageError(f"the prompt has {n_tags} {IMAGE_TOKEN} tags but {n_images} images or frames were given")
    if n_tags == 0:
        return "".join(f"{IMAGE_TOKEN}\n" * k if k else image_text for k in tiles) + question
    parts = question.split(IMAGE_TOKEN)
    return parts[0] + "".join((f"{IMAGE_TOKEN}\n" * k if k else IMAGE_TOKEN) + rest for k, rest in zip(tiles, parts[1:]))


def tokenize_prompt(tokenizer, prompt: str) -> list[int]:
    """Split on `<image>`, tokenise each chunk on its own, join with IMAGE_TOKEN_INDEX, keep only the first BOS.

    As VILA's tokenizer_image_token: per-chunk encoding is why "USER: " ends in a lone "▁"
    before an image and the chunk after it gets a fresh dummy prefix. A BOS is dropped from
    later chunks only where the tokenizer added it (not where the chunk's text spells it out).
    """
    bos, bos_text = tokenizer.bos_token_id, tokenizer.bos_token
    ids: list[int] = []
    for i, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
        chunk_ids = tokenizer(chunk).input_ids
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            if chunk_ids and chunk_ids[0] == bos and not (bos_text and chunk.startswith(bos_text)):
                chunk_ids = chunk_ids[1:]
        ids.extend(chunk_ids)
    return ids


def split_at_images(ids: list[int]) -> list[list[int]]:
    """Token runs between image blocks: n images give n + 1 runs (some may be empty)."""
    runs, run = [], []
    for t in ids:
        if t == IMAGE_TOKEN_INDEX:
            runs.append(run)
            run = []
        else:
            run.append(t)
    return runs + [run]


def splice_parts(ids: list[int], image_embeds, embed, image_end_ids: list[int]) -> list:
    """The pieces of inputs_embeds in order: text runs through `embed`, each image block followed by
    the embedding of the family's image-end text. Backends concatenate them (torch or numpy)."""
    runs = split_at_images(ids)
    n_images = 0 if image_embeds is None else len(image_embeds)
    if len(runs) - 1 != n_images:
        raise UsageError(f"the prompt has {len(runs) - 1} image places but {n_images} images were encoded")
    parts = [embed(runs[0])]
    for block, run in zip(image_embeds if n_images else [], runs[1:]):
        parts += [block, embed(image_end_ids), embed(run)]
    return parts

"""The text side of the engine without torch or transformers: HF's tokenizer, saved once, run with `tokenizers` and jinja2.

At build time `save_engine_tokenizer` writes the fast backend (tokenizer.json) and what HF adds on top of
it (tokenizer_meta.json): the ids it puts around a text, the special tokens and the chat template.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from ..errors import CheckpointError

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
_CLEANUP_PROBE = "a . b ? c ! d , e ' f n't g 'm h 's i 've j 're k"


@dataclass
class Encoding:
    input_ids: list[int]


def clean_up_tokenization(text: str) -> str:
    """HF's clean_up_tokenization: drop the space before punctuation and English contractions."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


def save_engine_tokenizer(hf_tokenizer, folder: Path) -> None:
    """Write tokenizer.json and tokenizer_meta.json for EngineTokenizer from a loaded HF fast tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
    prefix, suffix = _added_ids(hf_tokenizer)
    template = hf_tokenizer.chat_template
    if isinstance(template, dict):  # named templates: HF renders the default one
        template = template.get("default")
    meta = {
        "bos_token": hf_tokenizer.bos_token,
        "bos_token_id": hf_tokenizer.bos_token_id,
        "eos_token": hf_tokenizer.eos_token,
        "eos_token_id": hf_tokenizer.eos_token_id,
        "pad_token_id": hf_tokenizer.pad_token_id,
        "prefix_ids": prefix,
        "suffix_ids": suffix,
        "clean_up_tokenization_spaces": _cleans_up_spaces(hf_tokenizer),
        "split_special_tokens": bool(getattr(hf_tokenizer, "split_special_tokens", False)),
        "special_tokens_map": hf_tokenizer.special_tokens_map,
        "chat_template": template,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False))


def _added_ids(hf_tokenizer) -> tuple[list[int], list[int]]:
    """The ids HF puts before and after a text when add_special_tokens=True, found by encoding one both ways."""
    bare = hf_tokenizer("x", add_special_tokens=False).input_ids
    full = hf_tokenizer("x").input_ids
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise ValueError(f"the tokenizer's special tokens do not wrap the text: {full} vs {bare}")


def _cleans_up_spaces(hf_tokenizer) -> bool:
    """Whether HF's decode applies clean_up_tokenization (transformers 5 skips it for BPE models)."""
    ids = hf_tokenizer(_CLEANUP_PROBE, add_special_tokens=False).input_ids
    raw = hf_tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=True)
    return hf_tokenizer.decode(ids, skip_special_tokens=True) != raw


class EngineTokenizer:
    """The subset of HF's tokenizer interface the front uses, on `tokenizers` and jinja2 alone."""

    def __init__(self, backend, meta: dict):
        self.backend = backend
        self.bos_token, self.bos_token_id = meta["bos_token"], meta["bos_token_id"]
        self.eos_token, self.eos_token_id = meta["eos_token"], meta["eos_token_id"]
        self.pad_token_id = meta.get("pad_token_id")  # engines built before it was recorded: None
        self.prefix_ids, self.suffix_ids = list(meta["prefix_ids"]), list(meta["suffix_ids"])
        self.clean_up_tokenization_spaces = bool(meta["clean_up_tokenization_spaces"])
        self.special_tokens_map = dict(meta["special_tokens_map"])
        self.chat_template = meta["chat_template"]
        backend.encode_special_tokens = bool(meta["split_special_tokens"])
        backend.no_padding()
        backend.no_truncation()

    @classmethod
    def load(cls, folder: str | Path) -> "EngineTokenizer":
        from tokenizers import Tokenizer

        folder = Path(folder)
        path, meta_path = folder / TOKENIZER_FILE, folder / META_FILE
        for p in (path, meta_path):
            if not p.is_file():
                raise CheckpointError(f"{p}: missing; write it with save_engine_tokenizer from the HF tokenizer")
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise CheckpointError(f"{path}: not a valid tokenizer.json ({e}); write it again with save_engine_tokenizer") from None
        try:
            return cls(backend, json.loads(meta_path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{meta_path}: corrupt ({e!r}); write it again with save_engine_tokenizer") from None

    def __call__(self, text: str, add_special_tokens: bool = True) -> Encoding:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens:
            ids = self.prefix_ids + ids + self.suffix_ids
        return Encoding(ids)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True) -> str:
        if tokenize:
            raise NotImplementedError("EngineTokenizer.apply_chat_template renders text only; tokenize the result")
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return self._template.render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
            **self.special_tokens_map,
        )

    @cached_property
    def _template(self):
        return compile_chat_template(self.chat_template)


def compile_chat_template(source: str):
    """Compile a chat template in the environment transformers renders it in."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """`{% generation %}…{% endgeneration %}` marks assistant text for HF's masks; rendering ignores it."""

        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)

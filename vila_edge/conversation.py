"""Conversation templates as data, and which one a checkpoint uses.

Texts are the single-turn generation prompts of the VILA code each model was trained
with (llava/conversation.py, May24 and later); `{question}` is the user turn, images included.
"""

import warnings
from dataclasses import dataclass

from .errors import UsageError

_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAMA3_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
    "assistant. You are able to understand the visual content that the user provides, and assist the user "
    "with a variety of tasks using natural language."
)


@dataclass(frozen=True)
class Template:
    name: str
    prompt: str | None  # with "{question}"; None: render with the tokenizer's own chat template
    stop: tuple[str, ...]  # generation stops at any of these; they are cut from the answer


TEMPLATES = {
    t.name: t
    for t in (
        Template("vicuna_v1", _VICUNA_SYSTEM + " USER: {question} ASSISTANT:", ("</s>",)),
        # Llama-3-VILA1.5-8B-Fix and the README since Aug 2024.
        Template(
            "llama_3",
            _LLAMA3_SYSTEM + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ("<|eot_id|>",),
        ),
        # The May 2024 template the original Llama-3-VILA1.5-8B was trained with: sep <|end_of_text|>
        # and an assistant header that reads "system" (the bug "-Fix" retrained away).
        Template(
            "llama_3_original",
            _LLAMA3_SYSTEM + "<|end_of_text|><|start_header_id|>user<|end_header_id|>\n\n{question}<|end_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\n",
            ("<|end_of_text|>",),
        ),
        Template(
            "hermes-2",
            "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n{question}<|im_end|>"
            "<|im_start|>assistant\n",
            ("<|im_end|>",),
        ),
        Template(
            "qwen2",
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n",
            ("<|im_end|>",),
        ),
        Template("auto", None, ()),
    )
}

# Checkpoint-name substrings -> conv mode, most specific first (VILA README, TRT-LLM's mapping).
KNOWN_NAMES = (
    ("nvila", "qwen2"),
    ("8b-fix", "llama_3"),
    ("vila1.5-8b", "llama_3_original"),
    ("40b", "hermes-2"),
    ("13b", "vicuna_v1"),
    ("3b", "vicuna_v1"),
)


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise UsageError(f"unknown conv mode {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def resolve_conv_mode(ckpt, flag: str | None, tokenizer=None) -> tuple[str, str]:
    """(conv mode, where it came from): the flag; the checkpoint's record or known name; the
    tokenizer's chat template; else vicuna_v1 with a warning."""
    if flag:
        return get_template(flag).name, "--conv-mode"
    for key in ("conv_mode", "chat_template"):  # ours, and the remote-code conversions'
        if ckpt.config.get(key) in TEMPLATES:
            return ckpt.config[key], f"config.json {key}"
    for jinja in sorted(ckpt.root.glob("*.jinja")):
        if jinja.stem in TEMPLATES:
            return jinja.stem, jinja.name
    name = ckpt.name.lower()
    if "vila" in name:
        for part, mode in KNOWN_NAMES:
            if part in name:
                return mode, f"checkpoint name {ckpt.name!r}"
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return "auto", "the tokenizer's chat template"
    warnings.warn(
        f"{ckpt.root}: no conv mode recorded or recognisable; using vicuna_v1. Pass --conv-mode to choose.",
        stacklevel=2,
    )
    return "vicuna_v1", "default"


def render(template: Template, question: str, tokenizer=None) -> str:
    """The full prompt text for one user turn, ready for generation."""
    if template.prompt is not None:
        return template.prompt.replace("{question}", question)
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("--conv-mode auto needs a tokenizer with a chat template; this one has none. Pick a conv mode")
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_strings(template: Template, tokenizer) -> tuple[str, ...]:
    if template.stop:
        return template.stop
    return (tokenizer.eos_token,) if tokenizer.eos_token else ()

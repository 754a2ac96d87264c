"""Which conversation template a model uses, and the prompt it renders (the templates are data in arch.py)."""

import warnings

from .arch import KNOWN_NAMES, TEMPLATES, Template
from .backend import ModelInfo
from .errors import UsageError


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise UsageError(f"unknown conv mode {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def resolve_conv_mode(ckpt: ModelInfo, flag: str | None, tokenizer=None) -> tuple[str, str]:
    """(conv mode, where it came from): the flag; the checkpoint's record or known name; the
    tokenizer's chat template; else vicuna_v1 with a warning."""
    if flag:
        return get_template(flag).name, "--conv-mode"
    recorded = ckpt.recorded_conv_mode()
    if recorded is not None:
        return recorded
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
    return render_conversation(template, None, [("user", question)], tokenizer)


def render_conversation(template: Template, system: str | None, turns: list[tuple[str, str]], tokenizer=None) -> str:
    """The prompt text of a conversation: an optional system prompt (None: the template's own), then (role, text)
    turns, user and assistant alternating and ending with a user turn, ready for generation."""
    if template.system_turn is not None:
        return template.render(system, turns)
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("--conv-mode auto needs a tokenizer with a chat template; this one has none. Pick a conv mode")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": role, "content": text} for role, text in turns]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_strings(template: Template, tokenizer) -> tuple[str, ...]:
    if template.stop:
        return template.stop
    return (tokenizer.eos_token,) if tokenizer.eos_token else ()

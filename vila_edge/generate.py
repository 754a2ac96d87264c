"""Sampling, stop rules and the decode loop, shared by every backend (numpy only, no torch).

A backend offers `reset()`, `prefill(inputs) -> logits [V]` and `decode(token_id) -> logits [V]`
(backend.LogitsSource), or `generate_tokens(inputs, params)` when it samples on its own
(backend.TokenSource); `token_stream` gives either as one stream of tokens.
"""

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .backend import TokenSource
from .errors import UnsupportedError


class Constraint(Protocol):
    """Grammar-constrained decoding (serve's response_format): which tokens may come next."""

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """logits [V] with every token the grammar forbids now at -inf."""

    def accept(self, token_id: int) -> None:
        """The token sampled from the masked logits."""


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    constraint: Constraint | None = None


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        t, top_p = self.params.temperature, self.params.top_p
        if t <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / t
        p = np.exp(z - z.max())
        p /= p.sum()
        if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
            order = np.argsort(-p, kind="stable")
            before = np.cumsum(p[order]) - p[order]
            keep = order[before < top_p]
            mask = np.zeros_like(p)
            mask[keep] = p[keep]
            p = mask / mask.sum()
        return int(self.rng.choice(len(p), p=p))


class TextStream:
    """Incremental detokenisation with stop rules, as VILA's KeywordsStoppingCriteria: stop at EOS,
    at a stop string's token ids, or at a stop string in the decoded text. Emitted text never holds
    a stop string, a prefix of one that may still complete, or a half-decoded UTF-8 character."""

    def __init__(self, tokenizer, stop_strings: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.stop_ids = {tokenizer.eos_token_id} - {None}
        for s in self.stop_strings:
            ids = tokenizer(s, add_special_tokens=False).input_ids
            if len(ids) == 1:
                self.stop_ids.add(ids[0])
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a generated token; returns the text that is now safe to show."""
        if token_id in self.stop_ids:
            self.stopped = True
            return self._flush(len(self.text))
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        for s in self.stop_strings:
            cut = text.find(s)
            if cut >= 0:
                self.text, self.stopped = text[:cut], True
                return self._flush(cut)
        self.text = text
        safe = len(text)
        if text.endswith("\ufffd"):  # a multi-byte character still arriving
            safe = len(text.rstrip("\ufffd"))
        for s in self.stop_strings:
            for k in range(min(len(s) - 1, safe), 0, -1):
                if text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        return self._flush(safe)

    def finish(self) -> str:
        return self._flush(len(self.text))

    def _flush(self, upto: int) -> str:
        out = self.text[self.emitted : upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return out


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    stop_reason: str  # "stop" (EOS or stop string), "length" (max_new_tokens) or "context" (model limit)
    prompt_tokens: int
    n_generated: int  # sampled tokens, the stop token included
    first_token_at: float  # time.perf_counter() when the first token was sampled
    prefill_s: float
    decode_s: float  # after the first token

    @property
    def decode_tok_s(self) -> float:
        n = self.n_generated - 1  # decode steps
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


def sampled_tokens(backend, inputs, params: SamplingParams):
    """Our sampler over the backend's logits: prefill, then one decode step per further token asked for."""
    sampler, constraint = Sampler(params), params.constraint
    backend.reset()
    logits = backend.prefill(inputs)
    while True:
        if constraint is None:
            token = sampler(logits)
        else:
            token = sampler(constraint.mask(logits))
            constraint.accept(token)
        yield token
        logits = backend.decode(token)


def token_stream(backend, inputs, params: SamplingParams):
    """The backend's tokens for a spliced prompt: its own sampler's, or ours over its logits."""
    if isinstance(backend, TokenSource):
        if params.constraint is not None:
            raise UnsupportedError("constrained decoding (response_format) needs our sampler: serve a cpu engine or a "
                                   "checkpoint; TensorRT-LLM samples on its own")
        return backend.generate_tokens(inputs, params)
    return sampled_tokens(backend, inputs, params)


def generate(
    backend,
    inputs,
    prompt_tokens: int,
    stream: TextStream,
    params: SamplingParams,
    max_length: int,
    on_text: Callable[[str], None] | None = None,
) -> Generation:
    """Prefill `inputs` (already spliced), then sample until a stop rule, max_new_tokens or max_length.
    A backend that samples on its own (TensorRT-LLM) offers `generate_tokens(inputs, params)` instead of
    prefill/decode; the stop rules and the text stream stay here either way."""
    emit = on_text or (lambda s: None)
    t0 = time.perf_counter()
    tokens = token_stream(backend, inputs, params)
    t1, reason, n_generated = None, "length", 0
    try:
        for token in tokens:
            t1 = t1 or time.perf_counter()
            n_generated += 1
            emit(stream.push(token))
            if stream.stopped:
                reason = "stop"
                break
            if n_generated >= params.max_new_tokens:
                break
            if prompt_tokens + n_generated >= max_length:
                reason = "context"
                break
    finally:
        tokens.close()
    emit(stream.finish())
    t2 = time.perf_counter()
    t1 = t1 or t2
    return Generation(stream.token_ids, stream.text.strip(), reason, prompt_tokens, n_generated, t1, t1 - t0, t2 - t1)

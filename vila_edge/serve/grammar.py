"""JSON output through grammar-constrained decoding: llguidance (guidance-ai's Rust grammar engine, the one vLLM,
SGLang and llama.cpp use), chosen over xgrammar because it runs on numpy alone; xgrammar requires torch,
transformers and triton, which a cpu engine has none of. The mask is computed per token from the tokenizer's
tokenizer.json (the engine's own copy, or a checkpoint's fast tokenizer)."""

import json

import numpy as np

from .protocol import ApiError

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}  # json.dumps' one line


def tokenizer_json(tokenizer) -> str:
    """The tokenizers-library JSON of an EngineTokenizer or a transformers fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "backend", None)
    if backend is None or not hasattr(backend, "to_str"):
        raise ApiError(400, "response_format json needs a fast (tokenizers) tokenizer, which this model lacks",
                       "response_format", "unsupported")
    return backend.to_str()


class GrammarTokenizer:
    """llguidance's view of the model's vocabulary, built once per server (it takes about a second)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        import llguidance

        self.vocab_size = vocab_size
        self.ll = llguidance.LLTokenizer(tokenizer_json(tokenizer), n_vocab=vocab_size, eos_token=stop_ids)

    def constraint(self, response_format: dict) -> "GrammarConstraint | None":
        """The request's constraint: None for text, JSON (any object) for json_object, the schema for json_schema."""
        if response_format["type"] == "text":
            return None
        import llguidance

        schema = response_format.get("schema") or {"type": "object"}
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_STYLE)
        except ValueError as e:
            raise ApiError(400, f"response_format schema: {e}", "response_format", "invalid_schema") from None
        return GrammarConstraint(self, grammar)

    def regex(self, pattern: str) -> "GrammarConstraint":
        import llguidance

        return GrammarConstraint(self, llguidance.LLMatcher.grammar_from_regex(pattern))


class GrammarConstraint:
    """generate.Constraint over an llguidance grammar: masks the logits to what the grammar allows next."""

    def __init__(self, tokenizer: GrammarTokenizer, grammar: str):
        import llguidance
        import llguidance.numpy

        self._np = llguidance.numpy
        self.matcher = llguidance.LLMatcher(tokenizer.ll, grammar, log_level=0)
        if self.matcher.is_error():
            raise ApiError(400, f"response_format schema: {self.matcher.get_error()}", "response_format",
                           "invalid_schema")
        self.bitmask = self._np.allocate_token_bitmask(1, tokenizer.vocab_size)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        self._np.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        masked = np.array(logits, dtype=np.float32, copy=True)[None]
        self._np.apply_token_bitmask_inplace(masked, self.bitmask)
        return masked[0]

    def accept(self, token_id: int) -> None:
        self.matcher.consume_token(int(token_id))

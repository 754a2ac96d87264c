import numpy as np
import pytest

from vila_edge.checkpoint import load_checkpoint
from vila_edge.generate import Sampler, SamplingParams, TextStream, generate
from vila_edge.model.vlm import load_tokenizer


def test_greedy_is_argmax():
    logits = np.random.default_rng(0).normal(size=100).astype(np.float32)
    assert Sampler(SamplingParams(temperature=0))(logits) == int(np.argmax(logits))


def test_top_p_keeps_the_smallest_nucleus():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(p)
    drawn = {Sampler(SamplingParams(temperature=1.0, top_p=0.7, seed=s))(logits) for s in range(200)}
    assert drawn == {0, 1}  # 0.5 < 0.7 needs the second token; the third is never reached
    assert {Sampler(SamplingParams(temperature=1.0, top_p=0.01, seed=s))(logits) for s in range(50)} == {0}


def test_temperature_sampling_is_seeded_and_follows_the_distribution():
    logits = np.log(np.array([0.7, 0.2, 0.1]))
    a = [Sampler(SamplingParams(temperature=1.0, seed=3))(logits) for _ in range(5)]
    b = [Sampler(SamplingParams(temperature=1.0, seed=3))(logits) for _ in range(5)]
    assert a == b
    s = Sampler(SamplingParams(temperature=1.0, seed=1))
    counts = np.bincount([s(logits) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.7, 0.2, 0.1], atol=0.03)


@pytest.fixture(scope="module")
def tok(tiny):
    return load_tokenizer(load_checkpoint(tiny()))


def test_stream_cuts_a_stop_string_spread_over_tokens(tok):
    ids = tok("The answer is here. ASSISTANT: more", add_special_tokens=False).input_ids
    stream = TextStream(tok, ("ASSISTANT:",))
    shown = ""
    for t in ids:
        shown += stream.push(t)
        assert "ASSIS" not in shown  # a partial stop string is held back, never shown
        if stream.stopped:
            break
    shown += stream.finish()
    assert stream.stopped and shown == stream.text == "The answer is here. "


def test_stream_stops_at_eos_and_special_stop_tokens(tok):
    stream = TextStream(tok, ("</s>",))
    assert tok.eos_token_id in stream.stop_ids
    text = "".join(stream.push(t) for t in tok("Hello there", add_special_tokens=False).input_ids)
    stream.push(tok.eos_token_id)
    assert stream.stopped and text + stream.finish() == "Hello there"


def test_stream_without_stop_returns_everything(tok):
    stream = TextStream(tok, ())
    ids = tok("plain text, no stop", add_special_tokens=False).input_ids
    shown = "".join(stream.push(t) for t in ids) + stream.finish()
    assert shown == "plain text, no stop" and not stream.stopped


class ScriptedBackend:
    """Plays back a fixed token sequence: the loop's bookkeeping is what is under test."""

    def __init__(self, script, vocab=512):
        self.script, self.vocab, self.calls = script, vocab, []

    def reset(self):
        self.i = 0

    def _logits(self):
        z = np.zeros(self.vocab, dtype=np.float32)
        z[self.script[self.i]] = 1
        self.i += 1
        return z

    def prefill(self, inputs):
        self.calls.append(("prefill", inputs))
        return self._logits()

    def decode(self, token):
        self.calls.append(("decode", token))
        return self._logits()


def test_generate_limits(tok):
    words = tok("one two three four five", add_special_tokens=False).input_ids
    backend = ScriptedBackend(words + [tok.eos_token_id])
    gen = generate(backend, "x", 10, TextStream(tok), SamplingParams(max_new_tokens=3), max_length=100)
    assert gen.stop_reason == "length" and gen.token_ids == words[:3] and len(backend.calls) == 3
    gen = generate(backend, "x", 10, TextStream(tok), SamplingParams(max_new_tokens=50), max_length=100)
    assert gen.stop_reason == "stop" and gen.text == "one two three four five"
    assert [c[1] for c in backend.calls[-len(words):]] == words  # each sampled token is fed back
    gen = generate(backend, "x", 98, TextStream(tok), SamplingParams(max_new_tokens=50), max_length=100)
    assert gen.stop_reason == "context" and len(gen.token_ids) == 2


class OwnSampler:
    """Stands in for TensorRT-LLM's runner, which samples on its own (only the dispatch is under test)."""

    def generate_tokens(self, inputs, params):
        yield from [7, 8, 9][: params.max_new_tokens]


def test_token_stream_takes_a_backends_own_sampler_or_runs_ours(tok):
    from vila_edge.backend import LogitsSource, TokenSource
    from vila_edge.generate import token_stream

    own = OwnSampler()
    assert isinstance(own, TokenSource) and not isinstance(own, LogitsSource)
    assert list(token_stream(own, "x", SamplingParams(max_new_tokens=2))) == [7, 8]
    scripted = ScriptedBackend([5, 6, 7])
    assert isinstance(scripted, LogitsSource) and not isinstance(scripted, TokenSource)
    stream = token_stream(scripted, "x", SamplingParams())
    assert [next(stream) for _ in range(3)] == [5, 6, 7] and scripted.calls[0] == ("prefill", "x")


def test_every_backend_class_names_its_token_source():
    from vila_edge.backend import LogitsSource, TokenSource
    from vila_edge.model.vlm import VilaModel
    from vila_edge.runtime.cpu import CpuEngine
    from vila_edge.runtime.trt import TrtEngine

    def has(cls, names):
        return all(callable(getattr(cls, name, None)) for name in names)

    logits, tokens = ("reset", "prefill", "decode"), ("generate_tokens",)
    assert all(hasattr(LogitsSource, n) for n in logits) and hasattr(TokenSource, tokens[0])
    assert has(VilaModel, logits) and has(CpuEngine, logits) and has(TrtEngine, tokens)
    assert not has(CpuEngine, tokens) and not has(TrtEngine, logits)
    for cls in (VilaModel, CpuEngine, TrtEngine):
        assert callable(cls.encode_images) and callable(cls.splice)

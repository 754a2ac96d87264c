"""EngineTokenizer (tokenizers + jinja2 only) against HF's AutoTokenizer: same ids, text and prompts."""

import json
import subprocess
import sys
from pathlib import Path

import jinja2
import numpy as np
import pytest
from transformers import AutoTokenizer

from vila_edge.conversation import TEMPLATES, render
from vila_edge.errors import CheckpointError, UsageError
from vila_edge.generate import TextStream
from vila_edge.prompt import tokenize_prompt
from vila_edge.runtime.tokenizer import META_FILE, TOKENIZER_FILE, EngineTokenizer, save_engine_tokenizer

QUESTIONS = [
    "<image>\nWhat is this?",
    "<image>\n<image>\nCompare them.",
    "No image here.",
    "<image>Hi",
    "A <image> then <image>? Déjà vu, 日本語 😀  two  spaces\n\nand lines.",
]
MESSAGES = [
    [{"role": "user", "content": "<image>\nWhat is this?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 😀"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Ça va ?"}],
]
TEXT = "Héllo wörld, déjà vu: 日本語 😀 isn't it? <s> ok </s> <|im_start|>user<|im_end|>"
KINDS = ["llama", "llama+eos", "qwen2", pytest.param("smollm2", marks=pytest.mark.slow)]


def hf_tokenizer(folder, **kwargs):
    return AutoTokenizer.from_pretrained(folder, legacy=False, padding_side="right", **kwargs)


def engine_twin(hf, folder: Path) -> EngineTokenizer:
    save_engine_tokenizer(hf, folder)
    return EngineTokenizer.load(folder)


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tokenizer_dirs, tmp_path_factory):
    """(HF tokenizer, its EngineTokenizer twin) for each kind."""
    if request.param == "smollm2":
        from vila_edge.demo import smollm2_dir

        hf = hf_tokenizer(smollm2_dir())
    elif request.param == "llama+eos":
        hf = hf_tokenizer(tokenizer_dirs["llama"], add_eos_token=True)
    else:
        hf = hf_tokenizer(tokenizer_dirs[request.param])
    return hf, engine_twin(hf, tmp_path_factory.mktemp("engine-tokenizer"))


def test_attributes_match(pair):
    hf, eng = pair
    for name in ("bos_token", "bos_token_id", "eos_token", "eos_token_id", "chat_template"):
        assert getattr(eng, name) == getattr(hf, name), name


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches(pair, add_special_tokens):
    hf, eng = pair
    for text in ["", "x", " x ", TEXT, *QUESTIONS]:
        assert eng(text, add_special_tokens=add_special_tokens).input_ids == hf(
            text, add_special_tokens=add_special_tokens
        ).input_ids, text


@pytest.mark.parametrize("mode", ["vicuna_v1", "qwen2", "hermes-2", "auto"])
def test_prompt_ids_match(pair, mode):
    hf, eng = pair
    if mode == "auto" and not hf.chat_template:
        with pytest.raises(UsageError, match="chat template"):
            render(TEMPLATES[mode], "Hi", eng)
        return
    for question in QUESTIONS:
        prompt = render(TEMPLATES[mode], question, hf)
        assert render(TEMPLATES[mode], question, eng) == prompt
        assert tokenize_prompt(eng, prompt) == tokenize_prompt(hf, prompt), prompt


def decode_cases(hf) -> list[list[int]]:
    """Single ids across the vocabulary, every prefix of a multi-byte text (partial UTF-8), special tokens, noise."""
    n = len(hf)
    text_ids = hf(TEXT).input_ids
    specials = [i for i in (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) if i is not None]
    rng = np.random.default_rng(0)
    return (
        [[i] for i in range(min(n, 300))]
        + [[i] for i in range(300, n, max(1, n // 500))]
        + [text_ids[:k] for k in range(len(text_ids) + 1)]
        + [text_ids[k:] for k in range(len(text_ids))]
        + [specials + text_ids[:7] + specials + text_ids[7:]]
        + [rng.integers(0, n, size=int(rng.integers(1, 40))).tolist() for _ in range(100)]
    )


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_decode_matches(pair, skip_special_tokens):
    hf, eng = pair
    for ids in decode_cases(hf):
        assert eng.decode(ids, skip_special_tokens=skip_special_tokens) == hf.decode(
            ids, skip_special_tokens=skip_special_tokens
        ), ids
    assert any("\ufffd" in eng.decode(ids) for ids in decode_cases(hf))  # partial characters were covered


def test_text_stream_matches(pair):
    hf, eng = pair
    stops = ("</s>", "<|im_end|>", "ASSISTANT:")
    ids = hf(TEXT + " ASSISTANT: more", add_special_tokens=False).input_ids
    streams = TextStream(hf, stops), TextStream(eng, stops)
    assert streams[0].stop_ids == streams[1].stop_ids
    for token in ids:
        assert streams[1].push(token) == streams[0].push(token)
    assert streams[1].finish() == streams[0].finish() and streams[1].text == streams[0].text


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches(pair, add_generation_prompt):
    hf, eng = pair
    if not hf.chat_template:
        pytest.skip("no chat template")
    for messages in MESSAGES:
        want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert eng.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt) == want


# bos/eos tokens in the context, tojson, loop controls, {% generation %}, whitespace control and raise_exception
RICH_TEMPLATE = """{{ bos_token }}
{% for m in messages %}
    {% if m['role'] == 'tool' %}{{ raise_exception('no tools: ' + m['content']) }}{% endif %}
    {% if m['role'] == 'system' %}{% continue %}{% endif %}
    {% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}
    {% else %}{{ m['role'] }}: {{ m['content'] | tojson }}
{% endif %}
{% endfor %}
{%- if add_generation_prompt %}assistant:{% endif %}"""


def test_rich_template_matches(tokenizer_dirs, tmp_path):
    hf = hf_tokenizer(tokenizer_dirs["llama"])
    hf.chat_template = RICH_TEMPLATE
    eng = engine_twin(hf, tmp_path)
    for messages in MESSAGES:
        for gen in (True, False):
            want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert eng.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == want
    tool = MESSAGES[0] + [{"role": "tool", "content": "x"}]
    for tok in (hf, eng):
        with pytest.raises(jinja2.TemplateError, match="no tools: x"):
            tok.apply_chat_template(tool, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("kwargs", [
    {"clean_up_tokenization_spaces": True},  # ignored by transformers 5 for BPE models
    {"clean_up_tokenization_spaces": True, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output": True},
])
def test_clean_up_spaces_follows_hf(tokenizer_dirs, tmp_path, kwargs):
    hf = hf_tokenizer(tokenizer_dirs["qwen2"], **kwargs)
    eng = engine_twin(hf, tmp_path)
    ids = hf("Yes . No , isn't it ? I 'm sure !", add_special_tokens=False).input_ids
    assert eng.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_meta_records_the_added_ids(tokenizer_dirs, tmp_path):
    save_engine_tokenizer(hf_tokenizer(tokenizer_dirs["llama"], add_eos_token=True), tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert (meta["prefix_ids"], meta["suffix_ids"], meta["bos_token"]) == ([1], [2], "<s>")


BLOCK_TORCH = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"blocked: {name}")

sys.meta_path.insert(0, Block())
import vila_edge.checkpoint, vila_edge.caption, vila_edge.conversation, vila_edge.prompt, vila_edge.generate
import vila_edge.media
from vila_edge.conversation import TEMPLATES, render
from vila_edge.prompt import tokenize_prompt
from vila_edge.runtime.tokenizer import EngineTokenizer

tok = EngineTokenizer.load(sys.argv[1])
ids = tokenize_prompt(tok, render(TEMPLATES["auto"], "<image>Hi", tok))
print(len(ids), tok.decode([i for i in ids if i >= 0]), sorted(m for m in sys.modules if m.startswith(("torch", "transformers"))))
"""


def test_runtime_imports_neither_torch_nor_transformers(tokenizer_dirs, tmp_path):
    save_engine_tokenizer(hf_tokenizer(tokenizer_dirs["qwen2"]), tmp_path)
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[]")


@pytest.mark.parametrize("name", [TOKENIZER_FILE, META_FILE])
def test_missing_or_corrupt_files_are_named(tokenizer_dirs, tmp_path, name):
    save_engine_tokenizer(hf_tokenizer(tokenizer_dirs["qwen2"]), tmp_path)
    (tmp_path / name).write_text('{"not": "complete"')
    with pytest.raises(CheckpointError, match=f"{name}: (not a valid|corrupt)"):
        EngineTokenizer.load(tmp_path)
    (tmp_path / name).write_text("{}")
    with pytest.raises(CheckpointError, match=f"{name}: (not a valid|corrupt)"):
        EngineTokenizer.load(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}: missing"):
        EngineTokenizer.load(tmp_path)

import json
import warnings

import pytest

from vila_edge import IMAGE_TOKEN_INDEX
from vila_edge.checkpoint import load_checkpoint
from vila_edge.conversation import TEMPLATES, render, resolve_conv_mode
from vila_edge.errors import UsageError
from vila_edge.model.vlm import load_tokenizer
from vila_edge.prompt import split_at_images, tokenize_prompt, user_turn

Q = "<image>\nWhat is this?"


def test_templates_render_the_published_prompts():
    # texts from reference/vila-checkpoint-format.md §3.1 and §3.2
    assert render(TEMPLATES["vicuna_v1"], Q) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is this? ASSISTANT:"
    )
    assert render(TEMPLATES["hermes-2"], Q) == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is this?<|im_end|>"
        "<|im_start|>assistant\n"
    )
    assert render(TEMPLATES["qwen2"], "<image>What is this?") == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n<image>What is this?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    llama3 = render(TEMPLATES["llama_3"], Q)
    assert llama3.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language")
    assert llama3.endswith(
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    original = render(TEMPLATES["llama_3_original"], Q)
    assert original.endswith("<|end_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert TEMPLATES["llama_3_original"].stop == ("<|end_of_text|>",) and TEMPLATES["llama_3"].stop == ("<|eot_id|>",)


def test_user_turn_places_one_tag_per_image():
    assert user_turn("Describe.", 2, "<image>\n") == "<image>\n<image>\nDescribe."
    assert user_turn("A <image> then <image>?", 2, "<image>\n") == "A <image> then <image>?"
    with pytest.raises(UsageError, match="1 <image> tags but 2"):
        user_turn("A <image>?", 2, "<image>\n")


def vila_tokenizer_image_token(prompt, tokenizer):
    """VILA's llava/mm_utils.py tokenizer_image_token, written out as published."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(x, sep):
        return [e for sub in zip(x, [sep] * len(x)) for e in sub][:-1]

    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for x in insert_separator(chunks, [IMAGE_TOKEN_INDEX] * (offset + 1)):
        ids.extend(x[offset:])
    return ids


@pytest.mark.parametrize("question", ["<image>\nWhat is this?", "<image>\n<image>\nCompare them.", "No image here."])
def test_tokenize_matches_vila_for_llama(tiny, question):
    tok = load_tokenizer(load_checkpoint(tiny()))
    prompt = render(TEMPLATES["vicuna_v1"], question)
    ids = tokenize_prompt(tok, prompt)
    assert ids == vila_tokenizer_image_token(prompt, tok)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids.count(IMAGE_TOKEN_INDEX) == question.count("<image>")
    if "<image>" in question:
        # "USER: " tokenised alone ends in a lone "▁" right before the image block
        assert tok.convert_ids_to_tokens(ids[ids.index(IMAGE_TOKEN_INDEX) - 1]) == "▁"


def test_tokenize_qwen2_has_no_bos(tiny):
    tok = load_tokenizer(load_checkpoint(tiny(arch="qwen2")))
    prompt = render(TEMPLATES["qwen2"], "<image>Hi")
    ids = tokenize_prompt(tok, prompt)
    assert ids == vila_tokenizer_image_token(prompt, tok)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    runs = split_at_images(ids)
    assert len(runs) == 2 and tok.decode(runs[1]).startswith("Hi<|im_end|>")


def test_bos_spelt_in_text_is_kept_but_added_bos_is_not():
    class Tok:  # a tokenizer whose BOS is also a template token (SmolLM2: <|im_start|>) and that adds none
        bos_token_id, bos_token = 1, "<s>"

        def __call__(self, text):
            class R:
                input_ids = [1] * text.count("<s>") + [7] * len(text.replace("<s>", ""))

            return R

    ids = tokenize_prompt(Tok(), "<s>ab<image><s>c")
    assert ids == [1, 7, 7, IMAGE_TOKEN_INDEX, 1, 7]


def test_split_at_images():
    assert split_at_images([1, 2, -200, 3, -200]) == [[1, 2], [3], []]


def _with_name(src, name, tmp_path):
    import shutil

    dst = tmp_path / name
    shutil.copytree(src, dst)
    return load_checkpoint(dst)


@pytest.mark.parametrize("name,mode", [
    ("VILA1.5-3b", "vicuna_v1"), ("VILA1.5-3b-s2", "vicuna_v1"), ("VILA1.5-13b", "vicuna_v1"),
    ("Llama-3-VILA1.5-8B-Fix", "llama_3"), ("Llama-3-VILA1.5-8B", "llama_3_original"),
    ("VILA1.5-40b", "hermes-2"), ("NVILA-8B", "qwen2"),
])
def test_conv_mode_from_known_names(tiny, tmp_path, name, mode):
    ckpt = _with_name(tiny(), name, tmp_path)
    assert resolve_conv_mode(ckpt, None) == (mode, f"checkpoint name {name!r}")


def test_conv_mode_order(tiny, copy_of, tmp_path):
    root = copy_of(tiny())
    ckpt = load_checkpoint(root)
    tok = load_tokenizer(ckpt)
    assert resolve_conv_mode(ckpt, "hermes-2", tok) == ("hermes-2", "--conv-mode")
    with pytest.raises(UsageError, match="unknown conv mode 'nope'"):
        resolve_conv_mode(ckpt, "nope", tok)
    with pytest.warns(UserWarning, match="using vicuna_v1"):
        assert resolve_conv_mode(ckpt, None, tok) == ("vicuna_v1", "default")
    qwen = load_checkpoint(tiny(arch="qwen2"))
    assert resolve_conv_mode(qwen, None, load_tokenizer(qwen)) == ("auto", "the tokenizer's chat template")
    (root / "llama_3.jinja").write_text("")  # remote-code conversions ship <conv_mode>.jinja
    assert resolve_conv_mode(load_checkpoint(root), None, tok)[0] == "llama_3"
    cfg = json.loads((root / "config.json").read_text())
    cfg["chat_template"] = "hermes-2"
    (root / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_conv_mode(load_checkpoint(root), None, tok) == ("hermes-2", "config.json chat_template")


def test_auto_renders_the_tokenizer_template(tiny):
    tok = load_tokenizer(load_checkpoint(tiny(arch="qwen2")))
    assert render(TEMPLATES["auto"], "<image>Hi", tok) == render(TEMPLATES["qwen2"], "<image>Hi")
    llama_tok = load_tokenizer(load_checkpoint(tiny()))
    with pytest.raises(UsageError, match="with a chat template; this one has none"):
        render(TEMPLATES["auto"], "Hi", llama_tok)

"""Tiny random VILA-layout checkpoints, built at test time (reference §6.2): no downloads."""

import inspect
import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from vila_edge.synthetic import write_projector, write_siglip_tower, write_top_config

VISION = dict(image_size=70, hidden=32, layers=3, heads=2, intermediate=64)  # 5x5 patches, odd like 27
# 2 heads of 32 (grouped 2:1) and every dimension a multiple of 64: what TensorRT-LLM's int4 GEMM and attention
# kernels run (its attention has no code for a head size of 16)
LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
           num_key_value_heads=1, max_position_embeddings=512, rms_norm_eps=1e-5,
           initializer_range=0.5)  # large weights, so every position (images too) moves the argmax
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    """Real English for tokenizer training: the standard library's docstrings."""
    import collections
    import json as json_mod
    import os
    import pathlib

    lines = []
    for mod in (os, json_mod, collections, pathlib, inspect, str, list, dict):
        for name in dir(mod):
            doc = inspect.getdoc(getattr(mod, name, None))
            if doc:
                lines += [line for line in doc.splitlines() if line.strip()]
    return lines + ["USER: ASSISTANT: Describe the image. What is in the picture?"] * 20


def llama_tokenizer(out: Path) -> None:
    """SentencePiece BPE with Llama's settings (identity normaliser, byte fallback, unk 0 / bos 1 / eos 2)."""
    import sentencepiece as spm

    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_prefix=str(out / "tokenizer"), vocab_size=512, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, add_dummy_prefix=True, num_threads=1, minloglevel=2,
    )
    (out / "tokenizer.vocab").unlink()
    cfg = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "add_eos_token": False,
           "model_max_length": 512, "padding_side": "right", "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>"}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


def qwen2_tokenizer(out: Path) -> None:
    """Byte-level BPE with Qwen2's special tokens and chat template; no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    tok.save(str(out / "tokenizer.json"))
    cfg = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
           "pad_token": "<|endoftext|>", "model_max_length": 512, "chat_template": QWEN2_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))


def build_llm(out: Path, arch: str, tokenizer_dir: Path, seed: int) -> None:
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0, **LLM)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(vocab_size=600, bos_token_id=None, eos_token_id=2, pad_token_id=0, **LLM)
        model = Qwen2ForCausalLM(cfg)
    model.config.tokenizer_model_max_length = 512
    model.config.model_max_length = 512
    model.to(torch.bfloat16).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)


def build_tiny_checkpoint(root: Path, tokenizer_dir: Path, projector_type: str = "mlp_downsample",
                          arch: str = "llama", seed: int = 0, **top) -> Path:
    """A complete VILA-layout checkpoint: tiny LLM + 3-layer SigLIP (70 px) + projector."""
    root.mkdir(parents=True)
    build_llm(root / "llm", arch, tokenizer_dir, seed)
    write_siglip_tower(root / "vision_tower", seed=seed + 1, **VISION)
    write_projector(root / "mm_projector", projector_type, VISION["hidden"], LLM["hidden_size"], seed=seed + 2)
    write_top_config(root, num_video_frames=2, **top)
    return root

"""Tiny random LLaMA-VID checkpoints in the released layout (reference model-families.md §4.1), built at test time:

- the model folder as YanweiLi/llama-vid-7b-full-224-video-fps-1 holds it: a flat LlavaLlamaAttForCausalLM
  config.json (bert_type qformer_pretrain_freeze, num_query, compress_type, rope linear x16, max_token, the keys the
  released code never reads), two fp16 pickle shards + pytorch_model.bin.index.json with the LLM, model.mm_projector.*
  and model.vlm_att_* (the Q-Former BERT with its position_ids buffer), the Llama tokenizer at the root;
- LAVIS's eva_vit_g.pth at the relative path the config names (model_zoo/LAVIS/), fp16, its pos_embed trained at a
  smaller grid than the processor's size (so it is interpolated, as 224 -> 336 upstream);
- the CLIP image processor folder `image_processor` names, and a tiny bert-base-uncased folder (vocab.txt,
  tokenizer_config.json, config.json) standing in for the hub's.

Shapes: EVA width 176 (2 heads of 88, eva_vit.py's head width), 3 blocks, mlp int(176 x 4.3637); 56 px images, patch 14
(4x4 patches + CLS = 17 tokens; the table is trained at 3x3); a 4-layer BERT of width 32 (cross-attention in layers 0
and 2); the tests' tiny Llama (hidden 64).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tiny import LLM
from transformers import LlamaConfig, LlamaForCausalLM

EVA = dict(width=176, depth=3, mlp=int(176 * 4.3637), patch=14, trained_grid=3)
IMAGE = 56
BERT = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "pad_token_id": 0,
        "position_embedding_type": "absolute", "model_type": "bert", "architectures": ["BertForMaskedLM"]}
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "man", "doing", "?", "describe", "video",
         "happens", "in", "this", "a", "scene", ".", "color", "##s", "##ing", "who", "where", "are", "they", "of"]
OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
TOWER_PATH = "./model_zoo/LAVIS/eva_vit_g.pth"


def eva_state(seed: int, eva: dict = EVA) -> dict[str, torch.Tensor]:
    """eva_vit_g.pth's tensors (LAVIS names), random, fp16 as LAVIS saved them."""
    g = torch.Generator().manual_seed(seed)
    c, mlp, p = eva["width"], eva["mlp"], eva["patch"]

    def r(*shape, std=0.05):
        return (torch.randn(*shape, generator=g) * std).half()

    state = {"cls_token": r(1, 1, c, std=0.5), "pos_embed": r(1, eva["trained_grid"] ** 2 + 1, c, std=0.5),
             "patch_embed.proj.weight": r(c, 3, p, p, std=0.02), "patch_embed.proj.bias": r(c)}
    for i in range(eva["depth"]):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + r(c), b + "norm1.bias": r(c), b + "attn.qkv.weight": r(3 * c, c),
                      b + "attn.q_bias": r(c), b + "attn.v_bias": r(c), b + "attn.proj.weight": r(c, c),
                      b + "attn.proj.bias": r(c), b + "norm2.weight": 1 + r(c), b + "norm2.bias": r(c),
                      b + "mlp.fc1.weight": r(mlp, c), b + "mlp.fc1.bias": r(mlp), b + "mlp.fc2.weight": r(c, mlp),
                      b + "mlp.fc2.bias": r(c)})
    return state


def _linear(g, out: int, inp: int, prefix: str, std=0.2, fan_in: bool = False) -> dict[str, torch.Tensor]:
    """Random weights: `std` (large on purpose, so that tiny models' outputs move with their inputs), or with fan_in
    nn.Linear's own scale 1/sqrt(inp) (real widths, where a large std saturates every softmax)."""
    std = inp**-0.5 if fan_in else std
    return {f"{prefix}.weight": torch.randn(out, inp, generator=g) * std, f"{prefix}.bias": torch.randn(out, generator=g) * 0.05}


def _norm(g, width: int, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(width, generator=g), f"{prefix}.bias": 0.05 * torch.randn(width, generator=g)}


def qformer_state(g, vocab: int, num_query: int, llm_hidden: int, bert: dict = BERT, att: int = EVA["width"],
                  fan_in: bool = False) -> dict[str, torch.Tensor]:
    """model.vlm_att_*: the LAVIS Q-Former (BertLMHeadModel.bert, cls dropped) and LLaMA-VID's projections."""
    w, inner = bert["hidden_size"], bert["intermediate_size"]
    linear = lambda *a, **k: _linear(*a, **k, fan_in=fan_in)  # noqa: E731
    e = "model.vlm_att_encoder.bert."
    state = {e + "embeddings.word_embeddings.weight": torch.randn(vocab, w, generator=g),
             e + "embeddings.position_embeddings.weight": torch.randn(bert["max_position_embeddings"], w, generator=g) * 0.5,
             e + "embeddings.position_ids": torch.arange(bert["max_position_embeddings"])[None],
             **_norm(g, w, e + "embeddings.LayerNorm")}
    for i in range(bert["num_hidden_layers"]):
        layer = f"{e}encoder.layer.{i}."
        blocks = ["attention"] + (["crossattention"] if i % 2 == 0 else [])
        for block in blocks:
            kv = att if block == "crossattention" else w
            for name, width in (("query", w), ("key", kv), ("value", kv)):
                state.update(linear(g, w, width, f"{layer}{block}.self.{name}"))
            state.update(linear(g, w, w, f"{layer}{block}.output.dense"))
            state.update(_norm(g, w, f"{layer}{block}.output.LayerNorm"))
        for suffix in ("", "_query"):
            state.update(linear(g, inner, w, f"{layer}intermediate{suffix}.dense"))
            state.update(linear(g, w, inner, f"{layer}output{suffix}.dense"))
            state.update(_norm(g, w, f"{layer}output{suffix}.LayerNorm"))
    state["model.vlm_att_query"] = torch.randn(1, num_query, w, generator=g)
    state.update(_norm(g, att, "model.vlm_att_ln"))
    state.update(linear(g, att, w, "model.vlm_att_projector"))
    state.update(linear(g, att, att, "model.vlm_att_key_projector", std=0.1))
    state.update(linear(g, llm_hidden, att, "model.vlm_att_val_projector", std=0.5))
    state.update(linear(g, llm_hidden, att, "model.mm_projector.0", std=0.2))
    state.update(linear(g, llm_hidden, llm_hidden, "model.mm_projector.2", std=1.0))
    return state


def write_bert_folder(out: Path, bert: dict = BERT) -> Path:
    """bert-base-uncased as a local copy holds it: vocab.txt, tokenizer_config.json, config.json (tiny)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (out / "config.json").write_text(json.dumps({**bert, "vocab_size": len(WORDS)}))
    return out


def write_processor(out: Path, size: int = IMAGE) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    processor = {"crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                 "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": OPENAI_MEAN, "image_std": OPENAI_STD,
                 "resample": 3, "size": size}
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return out


def build_llamavid(root: Path, tokenizer_dir: Path, compress_type: str | None = "mean_concat", num_query: int = 8,
                   seed: int = 50, tower: bool = True, eva: dict = EVA, bert: dict = BERT, llm_shape: dict = LLM,
                   image: int = IMAGE, fan_in: bool = False) -> Path:
    """The released layout in `root` (the tower at its config path unless tower=False); the shapes are the tests'
    unless given (benchmarks/llamavid.py builds one at EVA-ViT-g's and BERT-base's)."""
    root.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0, **llm_shape))
    state = {k: v.half() for k, v in llm.eval().state_dict().items()}
    hidden = llm_shape["hidden_size"]
    state.update({k: v if k.endswith("position_ids") else v.half()
                  for k, v in qformer_state(g, len(WORDS) + 1, num_query, hidden, bert, eva["width"], fan_in).items()})
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": [n for n in names if "vlm_att" not in n],
              "pytorch_model-00002-of-00002.bin": [n for n in names if "vlm_att" in n]}
    for file, keys in shards.items():
        torch.save({k: state[k] for k in keys}, root / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (root / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    if tower:
        (root / "model_zoo" / "LAVIS").mkdir(parents=True)
        torch.save(eva_state(seed + 1, eva), root / TOWER_PATH)
    write_processor(root / "model_zoo" / "OpenAI" / "clip-vit-large-patch14", image)
    config = {"_name_or_path": "./model_zoo/LLM/vicuna/7B-V1.5", "architectures": ["LlavaLlamaAttForCausalLM"],
              "bert_type": "qformer_pretrain_freeze", "bos_token_id": 1, "compress_type": compress_type,
              "cross_att_freq": 2, "eos_token_id": 2, "freeze_mm_mlp_adapter": False, "fusion_type": None,
              "hidden_act": "silu", "hidden_size": hidden, "image_aspect_ratio": "pad",
              "image_processor": "./model_zoo/OpenAI/clip-vit-large-patch14", "initializer_range": 0.02,
              "intermediate_size": llm_shape["intermediate_size"],
              "max_position_embeddings": llm_shape["max_position_embeddings"],
              "max_token": 8192, "mm_hidden_size": eva["width"], "mm_projector_type": "mlp2x_gelu",
              "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
              "mm_vision_select_layer": -2, "mm_vision_tower": TOWER_PATH, "model_type": "llava",
              "num_attention_heads": llm_shape["num_attention_heads"],
              "num_hidden_layers": llm_shape["num_hidden_layers"],
              "num_key_value_heads": llm_shape["num_key_value_heads"], "num_qformer": 1, "num_query": num_query,
              "pad_token_id": 0, "position_type": None, "pretraining_tp": 1, "rms_norm_eps": llm_shape["rms_norm_eps"],
              "rope_scaling": {"factor": 16.0, "type": "linear"}, "tie_word_embeddings": False,
              "torch_dtype": "float16", "transformers_version": "4.31.0", "tune_mm_mlp_adapter": False,
              "use_cache": True, "use_mm_proj": True, "vocab_size": 512}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, root / f.name)
    return root

"""Tiny random LLaVA-1.5 checkpoints in the layouts users download (reference model-families.md §3.1), built at test
time, offline:

- the original (liuhaotian/llava-v1.5-7b): a flat LlavaLlamaForCausalLM config.json as transformers 4.31 wrote it,
  two fp16 pickle shards `pytorch_model-0000N-of-00002.bin` + `pytorch_model.bin.index.json` holding the LLM (with
  the `rotary_emb.inv_freq` buffers 4.31 saved) and `model.mm_projector.{0,2}`, `mm_projector.bin`, the tokenizer at
  the root, no vision weights (or, `tuned_tower`, a fine-tune's own `model.vision_tower.vision_tower.*`);
- a tiny CLIP folder standing in for openai/clip-vit-large-patch14-336: a whole CLIPModel (text half too) with the
  OpenAI image processor config (integer size / crop_size), placed as a folder or in a Hugging Face cache tree;
- llava-hf (llava-hf/llava-1.5-7b-hf): LlavaForConditionalGeneration's config with text_config / vision_config that
  leave transformers' defaults out as the hub's do, `<image>` / `<pad>` added to the tokenizer and the vocabulary
  padded to a multiple of 64 (32064 there), safetensors in transformers 4.x names or 5.x names, the hub's
  CLIPImageProcessor (shortest edge + centre crop, no pad) and chat_template.json.

Shapes: the tests' tiny Llama (tests/tiny.py: hidden 64, 2 layers) and a 3-layer CLIP of width 32 at 70 px, patch 14
(5x5 patches + CLS = 26 tokens; `patch` keeps 25, as 576 of 577 at 336 px).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny import LLM
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM

HUB_ID = "openai/clip-vit-large-patch14-336"
CLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=70,
                   patch_size=14, projection_dim=16)
CLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
                 max_position_embeddings=16, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
HF_CHAT_TEMPLATE = (  # llava-hf/llava-1.5-7b-hf chat_template.json
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def write_clip_folder(out: Path, seed: int) -> Path:
    """A whole tiny CLIPModel as the hub repo holds it, with OpenAI's preprocessor_config.json at 70 px."""
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=16)
    CLIPModel(config).eval().save_pretrained(out)
    processor = {"crop_size": 70, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                 "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": OPENAI_MEAN, "image_std": OPENAI_STD,
                 "resample": 3, "size": 70}
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return out


def write_hub_cache(hub: Path, clip_folder: Path, revision: str = "ce19dc912ca5cd21c8a653c79e251e65cd5bf8c0") -> Path:
    """clip_folder as huggingface_hub caches HUB_ID under `hub` (HF_HOME/hub): refs/main + snapshots/REVISION/."""
    repo = hub / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(clip_folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def _tiny_llama(vocab: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0, **LLM)).eval()


def _mlp2x_gelu(mm_hidden: int, hidden: int, seed: int) -> dict[str, torch.Tensor]:
    """LLaVA's mlp2x_gelu weights (Sequential indices 0 and 2), the last layer scaled up to the embeddings' size."""
    torch.manual_seed(seed)
    first, last = torch.nn.Linear(mm_hidden, hidden), torch.nn.Linear(hidden, hidden)
    return {"0.weight": first.weight.data, "0.bias": first.bias.data, "2.weight": 8 * last.weight.data,
            "2.bias": last.bias.data}


def _copy_tokenizer(tokenizer_dir: Path, root: Path) -> None:
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, root / f.name)


def build_original(root: Path, tokenizer_dir: Path, seed: int = 30, tuned_tower: CLIPModel | None = None,
                   tower_name: str = HUB_ID) -> Path:
    """liuhaotian/llava-v1.5-7b's layout: flat config, two fp16 pickle shards + index, mm_projector.bin."""
    root.mkdir(parents=True)
    llm = _tiny_llama(512, seed)
    state = {k: v.half() for k, v in llm.state_dict().items()}
    head_dim = LLM["hidden_size"] // LLM["num_attention_heads"]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for i in range(LLM["num_hidden_layers"]):  # transformers 4.31 saved the rotary buffer in every layer
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq
    projector = {f"model.mm_projector.{k}": v.half() for k, v in _mlp2x_gelu(32, LLM["hidden_size"], seed + 1).items()}
    state.update(projector)
    if tuned_tower is not None:
        # transformers 4.31's CLIPVisionModel kept its layers under vision_model.
        state.update({f"model.vision_tower.vision_tower.vision_model.{k}": v.half()
                      for k, v in tuned_tower.state_dict().items()})
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": [n for n in names if "layers.1." not in n],
              "pytorch_model-00002-of-00002.bin": [n for n in names if "layers.1." in n]}
    for file, keys in shards.items():
        torch.save({k: state[k] for k in keys}, root / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (root / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    torch.save(projector, root / "mm_projector.bin")
    config = {"_name_or_path": "./checkpoints/vicuna-7b-v1-5", "architectures": ["LlavaLlamaForCausalLM"],
              "bos_token_id": 1, "eos_token_id": 2, "freeze_mm_mlp_adapter": False, "hidden_act": "silu",
              "hidden_size": LLM["hidden_size"], "image_aspect_ratio": "pad", "initializer_range": 0.02,
              "intermediate_size": LLM["intermediate_size"], "max_length": 512,
              "max_position_embeddings": LLM["max_position_embeddings"], "mm_hidden_size": 32,
              "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
              "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2, "mm_vision_tower": tower_name,
              "model_type": "llava", "num_attention_heads": LLM["num_attention_heads"],
              "num_hidden_layers": LLM["num_hidden_layers"], "num_key_value_heads": LLM["num_key_value_heads"],
              "pad_token_id": 0, "pretraining_tp": 1, "rms_norm_eps": LLM["rms_norm_eps"], "rope_scaling": None,
              "tie_word_embeddings": False, "tokenizer_model_max_length": 512, "torch_dtype": "float16",
              "transformers_version": "4.31.0", "tune_mm_mlp_adapter": False, "tune_mm_vision_resampler": False,
              "unfreeze_mm_vision_tower": tuned_tower is not None, "use_cache": True, "use_mm_proj": True,
              "vocab_size": 512}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    _copy_tokenizer(tokenizer_dir, root)
    return root


# transformers 5.x in-memory names -> the 4.x names llava-hf's hub files use (conversion_mapping.py "llava", reversed)
TO_4X = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
         ("model.vision_tower.", "vision_tower.vision_model."), ("model.multi_modal_projector.", "multi_modal_projector."))


def build_llava_hf(root: Path, tokenizer_dir: Path, naming: str = "4.x", seed: int = 40) -> Path:
    """llava-hf/llava-1.5-7b-hf's layout: one model.safetensors with every part, in `naming` (4.x or 5.x)."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    root.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_tokens(["<image>"], special_tokens=True)  # 32000 there, 512 here
    tokenizer.add_special_tokens({"pad_token": "<pad>"})  # 32001 there
    tokenizer.save_pretrained(root)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    text = LlamaConfig(vocab_size=576, bos_token_id=1, eos_token_id=2, pad_token_id=0, **LLM)
    config = LlavaConfig(text_config=text, vision_config=CLIPVisionConfig(**CLIP_VISION), image_token_index=image_id,
                         projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.weight.mul_(8)
    state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    if naming == "4.x":
        state = {_renamed(k, TO_4X): v for k, v in state.items()}
    save_file(state, root / "model.safetensors", metadata={"format": "pt"})
    keep = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
            "max_position_embeddings", "rms_norm_eps", "vocab_size")
    text_config = {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "torch_dtype": "float16", **{k: getattr(text, k) for k in keep}}
    vision_config = {"model_type": "clip_vision_model", **CLIP_VISION, "vocab_size": 32000}
    hub = {"architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": image_id,
           "model_type": "llava", "pad_token_id": tokenizer.pad_token_id, "projector_hidden_act": "gelu",
           "text_config": text_config, "tie_word_embeddings": False, "torch_dtype": "float16",
           "transformers_version": "4.36.0.dev0", "vision_config": vision_config, "vision_feature_layer": -2,
           "vision_feature_select_strategy": "default", "vocab_size": 576}
    (root / "config.json").write_text(json.dumps(hub, indent=2))
    processor = {"crop_size": {"height": 70, "width": 70}, "do_center_crop": True, "do_convert_rgb": True,
                 "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": OPENAI_MEAN,
                 "image_processor_type": "CLIPImageProcessor", "image_std": OPENAI_STD, "processor_class": "LlavaProcessor",
                 "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": 70}}
    (root / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    (root / "chat_template.json").write_text(json.dumps({"chat_template": HF_CHAT_TEMPLATE}))
    return root


def _renamed(name: str, pairs) -> str:
    return next((new + name[len(old):] for old, new in pairs if name.startswith(old)), name)

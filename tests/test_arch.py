"""The architecture registry: every entry is complete and usable, and an unknown key names the supported ones."""

import pytest
from transformers import LlamaConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from vila_edge.arch import (
    FAMILIES,
    LLM_ARCHS,
    PROJECTORS,
    TEMPLATES,
    VISION_TOWERS,
    get_llm,
    get_tower,
    llm_for_trtllm_class,
    tower_kind,
)
from vila_edge.conversation import get_template
from vila_edge.errors import UnsupportedError, UsageError, VilaEdgeError

LAYERS = {"llama": (LlamaConfig, LlamaDecoderLayer), "qwen2": (Qwen2Config, Qwen2DecoderLayer)}
SHAPE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4)


@pytest.mark.parametrize("model_type", list(LLM_ARCHS))
def test_every_llm_entry_names_modules_its_decoder_layer_has(model_type):
    config_class, layer_class = LAYERS[model_type]
    layer = layer_class(config_class(**SHAPE), layer_idx=0)
    arch = get_llm(model_type)
    names = {n for n, _ in layer.named_modules()}
    for group in arch.scale_groups:
        assert {group.prev, group.inspect, *group.linears} <= names
    for parent, parts in arch.trtllm_linears.values():
        assert {f"{parent}.{p}" for p in parts} <= names
    assert set(arch.trtllm_norms.values()) <= names
    assert (layer.self_attn.q_proj.bias is not None) == arch.qkv_bias
    assert llm_for_trtllm_class(arch.trtllm_class) is arch


def test_unknown_keys_raise_a_vila_edge_error_listing_the_supported_ones():
    with pytest.raises(UnsupportedError, match=r"llm/config.json: LLM model_type 'gemma2' is not supported; supported: llama, qwen2"):
        get_llm("gemma2", "llm/config.json")
    with pytest.raises(UnsupportedError, match="AWQ has no scale groups for LLM model_type 'phi3'; supported: llama, qwen2"):
        get_llm("phi3", missing="AWQ has no scale groups for")
    with pytest.raises(UnsupportedError, match="vision tower 'RADIOModel' is not supported yet; supported: siglip, clip, intern"):
        get_tower("RADIOModel")
    with pytest.raises(UsageError, match="unknown conv mode 'chatml'; known: vicuna_v1, llama_3"):
        get_template("chatml")
    assert issubclass(UnsupportedError, VilaEdgeError)


def test_tower_kind_is_vilas_substring_match():
    assert tower_kind({"architectures": ["SiglipVisionModel"]}) == "siglip"
    assert tower_kind({"model_type": "clip_vision_model"}) == "clip"
    assert tower_kind({"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b"}) == "intern"
    assert tower_kind({"model_type": "intern_vit_6b"}) == "intern"
    assert tower_kind({"architectures": ["RADIOModel"]}) == "RADIOModel"
    assert VISION_TOWERS["clip"].cls_token and VISION_TOWERS["intern"].cls_token and not VISION_TOWERS["siglip"].cls_token


@pytest.mark.parametrize("kind", list(VISION_TOWERS))
def test_every_tower_entry_names_modules_its_hf_class_has(kind):
    import transformers

    spec = get_tower(kind)
    config_class = getattr(transformers, spec.hf_class.replace("Model", "Config"))
    tower = getattr(transformers, spec.hf_class)(config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                              num_attention_heads=2, image_size=28, patch_size=14))
    layer = getattr(tower, "vision_model", tower).get_submodule(spec.layers)[0]
    names = {n for n, _ in layer.named_modules()}
    for norm, linears in spec.smooth_pairs:
        assert {norm, *linears} <= names
    if spec.fused_qkv:
        assert set(spec.fused_qkv[1]) <= names


def test_registry_entries_are_consistent():
    assert all(t.name == name for name, t in TEMPLATES.items())
    assert all(f.name == name for name, f in FAMILIES.items())
    assert all(f.downsample_order in ("row", "column") for f in FAMILIES.values())
    for name, spec in PROJECTORS.items():
        assert (spec.downsample > 1) == bool(spec.order), name

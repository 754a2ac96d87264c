import pytest
from transformers import LlamaConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from vila_edge.errors import UnsupportedError
from vila_edge.quant.mappings import scale_groups

SHAPE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4)


def prevs(groups):
    return [g.group.prev for g in groups]


def test_mha_llama_gets_all_four_groups():
    layer = LlamaDecoderLayer(LlamaConfig(num_key_value_heads=4, **SHAPE), layer_idx=0)
    groups = scale_groups("llama", layer)
    assert prevs(groups) == ["input_layernorm", "self_attn.v_proj", "post_attention_layernorm", "mlp.up_proj"]
    assert groups[0].linears == [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]
    assert groups[0].inspect is layer.self_attn and groups[2].inspect is layer.mlp
    assert groups[3].prev is layer.mlp.up_proj and groups[3].linears == [layer.mlp.down_proj]


def test_gqa_skips_v_to_o():
    layer = Qwen2DecoderLayer(Qwen2Config(num_key_value_heads=2, **SHAPE), layer_idx=0)
    assert prevs(scale_groups("qwen2", layer)) == ["input_layernorm", "post_attention_layernorm", "mlp.up_proj"]


def test_unknown_architecture_lists_the_supported_ones():
    layer = LlamaDecoderLayer(LlamaConfig(**SHAPE), layer_idx=0)
    with pytest.raises(UnsupportedError, match="'gemma'; supported: llama, qwen2"):
        scale_groups("gemma", layer)

import json
import shutil

import pytest
import torch

from vila_edge.checkpoint import load_checkpoint
from vila_edge.errors import CheckpointError, UnsupportedError

TOKENS = {"mlp_downsample": 9, "mlp_downsample_2x2_fix": 9, "mlp_downsample_3x3_fix": 4, "linear": 25, "mlp2x_gelu": 25}


@pytest.mark.parametrize("projector_type", list(TOKENS))
def test_loads_each_projector_type(tiny, projector_type):
    ckpt = load_checkpoint(tiny(projector_type))
    assert ckpt.projector_type == projector_type
    assert ckpt.tokens_per_image == TOKENS[projector_type]
    assert ckpt.family.name == "vila1.5"
    assert (ckpt.llm_hidden, ckpt.mm_hidden, ckpt.select_layer, ckpt.num_video_frames) == (64, 32, -2, 2)


def test_qwen2_is_nvila_family_with_row_major_downsample(tiny):
    ckpt = load_checkpoint(tiny("mlp_downsample", arch="qwen2"))
    assert ckpt.family.name == "nvila"
    assert ckpt.projector_order() == "row"
    assert load_checkpoint(tiny("mlp_downsample")).projector_order() == "column"
    assert ckpt.projector_order("column") == "column"


def test_remote_code_vila_config(tiny, copy_of):
    root = copy_of(tiny())
    cfg = json.loads((root / "config.json").read_text())
    cfg.update(architectures=["VILAForCausalLM"], model_type="vila", version="2.0", chat_template="vicuna_v1")
    cfg["llm_cfg"] = "llm"  # a string value is a path
    (root / "config.json").write_text(json.dumps(cfg))
    ckpt = load_checkpoint(root)
    assert ckpt.llm_dir == root / "llm" and ckpt.config["model_type"] == "vila"


def _expect(root, *fragments, error=CheckpointError, **kw):
    with pytest.raises(error) as e:
        load_checkpoint(root, **kw)
    for f in fragments:
        assert f in str(e.value), str(e.value)
    return e.value


@pytest.mark.parametrize("part", ["llm", "vision_tower", "mm_projector"])
def test_missing_subfolder(tiny, copy_of, part):
    root = copy_of(tiny())
    shutil.rmtree(root / part)
    _expect(root, f"no {part}/ folder")


def test_missing_configs(tiny, copy_of):
    root = copy_of(tiny())
    (root / "vision_tower" / "preprocessor_config.json").unlink()
    _expect(root, "preprocessor_config.json: missing")
    (root / "config.json").unlink()
    _expect(root, "config.json: missing")
    _expect(root.parent / "nowhere", "no such checkpoint folder")


def test_missing_and_truncated_safetensors(tiny, copy_of):
    root = copy_of(tiny())
    weights = root / "vision_tower" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    _expect(root, str(weights), "truncated")
    weights.write_bytes(data[:5])
    _expect(root, str(weights), "truncated")
    weights.unlink()
    _expect(root, "vision_tower", "no weights")


def test_unknown_projector_type(tiny, copy_of):
    root = copy_of(tiny())
    (root / "mm_projector" / "config.json").write_text(json.dumps({"mm_projector_type": "mlp_downsample_4x4"}))
    _expect(root, "unknown mm_projector_type 'mlp_downsample_4x4'", "mlp_downsample_3x3_fix")


def test_projector_width_mismatch(tiny, copy_of):
    root = copy_of(tiny())
    cfg = json.loads((root / "vision_tower" / "config.json").read_text())
    cfg["hidden_size"] = 48
    (root / "vision_tower" / "config.json").write_text(json.dumps(cfg))
    _expect(root, "projector input width 128", "hidden 48 × 4 = 192")

    root = copy_of(tiny("mlp_downsample_3x3_fix"))
    cfg = json.loads((root / "llm" / "config.json").read_text())
    cfg["hidden_size"] = 96
    (root / "llm" / "config.json").write_text(json.dumps(cfg))
    _expect(root, "projector output width 64", "LLM hidden size 96")


def test_pickle_refused_unless_allowed(tiny, copy_of):
    root = copy_of(tiny())
    f = root / "mm_projector" / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(f), root / "mm_projector" / "pytorch_model.bin")
    f.unlink()
    _expect(root, "pytorch_model.bin", "pickle", "--allow-pickle")
    ckpt = load_checkpoint(root, allow_pickle=True)
    assert ckpt.is_pickle("mm_projector") and not ckpt.is_pickle("llm") and not ckpt.is_pickle("vision_tower")

    from vila_edge.model.vlm import VilaModel

    model = VilaModel(ckpt)  # the projector loads from the .bin
    assert model.projector.layers[2].weight.shape == (64, 128)


def test_unsupported_llm_and_missing_tokenizer(tiny, copy_of):
    root = copy_of(tiny())
    (root / "llm" / "tokenizer.model").unlink()
    _expect(root, "tokenizer files missing")
    cfg = json.loads((root / "llm" / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (root / "llm" / "config.json").write_text(json.dumps(cfg))
    _expect(root, "'gpt2' is not supported", "llama, qwen2", error=UnsupportedError)


def test_cli_inspect(tiny, cli):
    with pytest.warns(UserWarning, match="no conv mode recorded or recognisable; using vicuna_v1"):
        code, out, err = cli("inspect", tiny())
    assert code == 0, err
    assert "mlp_downsample (column-major tokens)" in out and "9 per image" in out
    code, out, _ = cli("inspect", tiny("mlp_downsample_3x3_fix", arch="qwen2"), "--format", "json")
    info = json.loads(out)
    assert info["family"] == "nvila" and info["tokens_per_image"] == 4 and info["conv_mode"] == "auto"
    assert info["parameters"]["mm_projector"] > 0


TEMPLATE_LAYOUTS = ("tokenizer_config", "list", "jinja", "jinja+named", "named", "none")


def lay_out_chat_template(llm, layout: str) -> None:
    """Move the tokenizer's chat template to one of the places transformers reads it from (or remove it)."""
    config = json.loads((llm / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    if layout in ("tokenizer_config", "named"):
        config["chat_template"] = template
    elif layout == "list":
        config["chat_template"] = [{"name": "default", "template": template}]
    elif layout.startswith("jinja"):
        (llm / "chat_template.jinja").write_text(template)
    (llm / "tokenizer_config.json").write_text(json.dumps(config))
    if layout.endswith("named"):
        (llm / "additional_chat_templates").mkdir()
        (llm / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages[0]['content'] }}")


@pytest.mark.parametrize("layout", TEMPLATE_LAYOUTS)
def test_the_chat_template_is_read_as_transformers_reads_it(tiny, copy_of, layout):
    """inspect reads the template without transformers; what it finds is what AutoTokenizer finds."""
    from vila_edge.model.vlm import load_tokenizer

    root = copy_of(tiny(arch="qwen2"))
    lay_out_chat_template(root / "llm", layout)
    ckpt = load_checkpoint(root)
    assert ckpt.chat_template == load_tokenizer(ckpt).chat_template
    assert bool(ckpt.chat_template) == (layout != "none")


def test_cli_inspect_an_engine(caption_engine, cli):
    code, out, err = cli("inspect", caption_engine)
    assert code == 0, err
    assert f"engine       {caption_engine} (cpu engine from " in out and "quantization awq int4 group 32" in out
    assert "conv mode    vicuna_v1 (from manifest.json (build-engine))" in out and "w8a8-dynamic ONNX" in out
    code, out, _ = cli("inspect", caption_engine, "--format", "json", "--conv-mode", "llama_3")
    info = json.loads(out)
    assert info["engine"] == str(caption_engine) and info["kind"] == "engine" and info["llm"]["layers"] == 2
    assert (info["conv_mode"], info["conv_mode_source"]) == ("llama_3", "--conv-mode")
    code, _, err = cli("inspect", caption_engine, "--projector-order", "row")
    assert code == 2 and "fixed by build-engine" in err


def test_cli_inspect_without_projector_fails_cleanly(tiny, copy_of, cli):
    root = copy_of(tiny())
    shutil.rmtree(root / "mm_projector")
    code, out, err = cli("inspect", root)
    assert code != 0 and out == ""
    assert "mm_projector" in err and "Traceback" not in err

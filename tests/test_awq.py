"""AWQ: folding, the search, the written checkpoint (read by an independent GEMM reader), bad input."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_int4 import autoawq_dequantize
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from vila_edge.corpus import write_stdlib_text
from vila_edge.demo import write_sample_image
from vila_edge.formats import AWQ_RESULTS_FILE as RESULTS_FILE
from vila_edge.quant.awq import _Search, apply_awq_results, fold_scales, round_linear
from vila_edge.quant.mappings import scale_groups
from vila_edge.quant.options import AwqSettings

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=300)
QUANT_ARGS = ("--group-size", 32, "--n-samples", 4, "--seqlen", 48, "--quiet", "--vision", "fp16")


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    return {split: write_stdlib_text(root / f"{split}.txt", split) for split in ("calib", "eval")}


@pytest.fixture(scope="module")
def quantized(tiny, texts, tmp_path_factory):
    """The tiny llama checkpoint AWQ-quantized through the CLI, with perplexities."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("awq") / "tiny-awq"
    code, stdout, err = run_cli("quantize", tiny(), "-o", out, *QUANT_ARGS[:-2], "--eval-text", texts["eval"],
                                "--eval-tokens", 2048, "--vision-calib-images", 8)
    assert code == 0, err
    return out, stdout


def random_llm(arch, kv_heads, seed=0):
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(num_key_value_heads=kv_heads, **SHAPE)).eval()
    return Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=kv_heads, **SHAPE)).eval()


# ---- the maths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,kv_heads", [("llama", 4), ("qwen2", 2)])
def test_folding_scales_leaves_the_fp_model_unchanged(arch, kv_heads):
    llm = random_llm(arch, kv_heads)
    with torch.no_grad():  # non-trivial norms, so a wrong fold could not hide behind weight 1
        for layer in llm.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 24))
    with torch.no_grad():
        before = llm(ids).logits
        n_groups = 0
        for layer in llm.model.layers:
            for group in scale_groups(arch, layer):
                s = torch.empty(group.linears[0].in_features).uniform_(0.2, 5.0)
                fold_scales(group.prev, group.linears, s)
                n_groups += 1
        after = llm(ids).logits
    assert n_groups == (8 if kv_heads == 4 else 6)  # MHA folds v -> o as well
    assert torch.allclose(after, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("duo_scaling", [False, True])
def test_search_picks_alpha_above_zero_for_an_outlier_channel(duo_scaling):
    llm = random_llm("llama", 2)
    layer = llm.model.layers[0]
    torch.manual_seed(1)
    x = torch.randn(4, 32, 64)
    x[..., 7] *= 60  # one salient input channel, as AWQ finds in real LLMs
    search = _Search(llm, "llama", AwqSettings(group_size=32, duo_scaling=duo_scaling), "cpu")
    mlp_group = scale_groups("llama", layer)[1]
    assert mlp_group.group.prev == "post_attention_layernorm"
    s, alpha = search.search_scale("layer 0", mlp_group, [x])
    assert alpha > 0 and s.argmax() == 7

    if not duo_scaling:  # (duo scaling also weighs the weights, so it finds something to scale in plain x too)
        x_plain = torch.randn(4, 32, 64)  # no outlier: scaling has little to win, RTN (alpha 0) stays a candidate
        _, alpha_plain = search.search_scale("layer 0", mlp_group, [x_plain])
        assert alpha_plain < alpha


def test_non_finite_activations_are_reported_where_they_happen():
    from vila_edge.quant.awq import QuantizeError

    llm = random_llm("llama", 2)
    search = _Search(llm, "llama", AwqSettings(group_size=32), "cpu")
    x = torch.randn(2, 16, 64)
    x[0, 3, 5] = float("inf")
    with pytest.raises(QuantizeError, match="model.layers.0.input_layernorm: the fp model's activations"):
        search.search_scale("model.layers.0.input_layernorm", scale_groups("llama", llm.model.layers[0])[0], [x])


def test_round_linear_packs_what_the_module_then_computes_with():
    lin = torch.nn.Linear(64, 16, bias=False)
    packed = round_linear(lin, 32)
    assert torch.equal(autoawq_dequantize(packed["qweight"], packed["qzeros"], packed["scales"], 32).t(), lin.weight)


# ---- the written checkpoint ------------------------------------------------------------------------


def test_quantized_checkpoint_layout(quantized):
    out, _ = quantized
    cfg = json.loads((out / "llm" / "config.json").read_text())
    assert cfg["quantization_config"] == {
        "quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": ["lm_head", "vision_tower", "mm_projector"],
    }
    state = load_file(out / "llm" / "model.safetensors")
    q = "model.layers.1.mlp.down_proj"  # in 128, out 64
    assert state[f"{q}.qweight"].shape == (128, 8) and state[f"{q}.qweight"].dtype == torch.int32
    assert state[f"{q}.qzeros"].shape == (4, 8) and state[f"{q}.qzeros"].dtype == torch.int32
    assert state[f"{q}.scales"].shape == (4, 64) and state[f"{q}.scales"].dtype == torch.float16
    assert f"{q}.weight" not in state
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert state[name].dtype == torch.float16
    assert sum(n.endswith(".qweight") for n in state) == 2 * 7
    report = json.loads((out / "quant_report.json").read_text())
    assert [layer["index"] for layer in report["layers"]] == [0, 1]
    assert all(layer["awq_loss"] <= layer["rtn_loss"] for layer in report["layers"])
    assert report["calibration"] == {"source": "self", "n_samples": 4, "seqlen": 48, "tokens": 192, "seed": 0}
    assert {"calibration", "search", "search.scale", "search.clip", "write", "eval", "total"} <= set(report["seconds"])
    assert set(report["perplexity"]) >= {"fp", "rtn", "awq"}


def test_vision_and_projector_are_copied_unchanged(quantized, tiny):
    out, _ = quantized
    for part in ("vision_tower", "mm_projector"):
        for f in (tiny() / part).iterdir():
            assert (out / part / f.name).read_bytes() == f.read_bytes()


def test_independent_reader_gets_the_weights_the_search_ended_with(quantized, tiny):
    """Re-apply awq_results.safetensors to the fp model and round: the same weights an AutoAWQ reader sees."""
    out, _ = quantized
    state = load_file(out / "llm" / "model.safetensors")
    fp = AutoModelForCausalLM.from_pretrained(tiny() / "llm", dtype=torch.float32)
    group_size = apply_awq_results(fp, out / RESULTS_FILE)
    for name, module in fp.named_modules():
        if name.startswith("model.layers.") and isinstance(module, torch.nn.Linear):
            round_linear(module, group_size)
            w = autoawq_dequantize(state[f"{name}.qweight"], state[f"{name}.qzeros"], state[f"{name}.scales"], 32)
            assert torch.equal(w.t(), module.weight), name
    norm = "model.layers.0.input_layernorm.weight"  # folded scales, stored fp16
    assert torch.equal(state[norm], fp.state_dict()[norm].half())


def test_quantized_checkpoint_captions_like_its_dequantised_fp_twin(quantized, tiny, cli, tmp_path, copy_of):
    """The torch backend on the AWQ checkpoint == on a plain checkpoint holding the independently dequantised weights."""
    out, _ = quantized
    twin = copy_of(tiny())
    state = load_file(out / "llm" / "model.safetensors")
    plain = {}
    for name, t in state.items():
        base, _, suffix = name.rpartition(".")
        if suffix == "qweight":
            plain[f"{base}.weight"] = autoawq_dequantize(t, state[f"{base}.qzeros"], state[f"{base}.scales"], 32).t()
        elif suffix not in ("qzeros", "scales"):
            plain[name] = t.float()
    plain["lm_head.weight"] = plain.get("lm_head.weight", plain["model.embed_tokens.weight"])
    for f in (twin / "llm").glob("*.safetensors"):
        f.unlink()
    save_file({k: v.contiguous() for k, v in plain.items()}, twin / "llm" / "model.safetensors")
    image = write_sample_image(tmp_path / "scene.png", size=96)
    args = ("--image", image, "--prompt", "Describe the image.", "--max-new-tokens", 12, "--format", "jsonl")
    answers = []
    for ckpt in (out, twin):
        code, stdout, err = cli("caption", ckpt, *args)
        assert code == 0, err
        answers.append(json.loads(stdout)["token_ids"])
    assert answers[0] == answers[1] and len(answers[0]) > 0


def test_inspect_shows_the_quantization(quantized, cli):
    out, _ = quantized
    code, stdout, _ = cli("inspect", out)
    assert code == 0 and "quantization awq int4 group 32 (gemm layout)" in stdout


def test_quantize_prints_the_perplexities(quantized):
    _, stdout = quantized
    assert "wrote" in stdout and "perplexity on 2048 tokens" in stdout and "awq" in stdout


def test_eval_ppl_compares_fp_rtn_and_awq(quantized, tiny, texts, cli):
    out, _ = quantized
    code, stdout, err = cli("eval-ppl", tiny(), "--awq", out, "--text", texts["eval"], "--max-tokens", 1024,
                            "--format", "json")
    assert code == 0, err
    ppl = json.loads(stdout)
    assert ppl["tokens"] == 1024 and ppl["rtn_group_size"] == 32
    assert all(math.isfinite(ppl[k]) and ppl[k] > 1 for k in ("fp", "rtn", "awq"))  # a random model: no bar here


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_text_and_media_calibration(arch, tiny, texts, tmp_path, cli):
    for i in range(2):
        write_sample_image(tmp_path / "media" / f"{i}.png", size=80, seed=i)
    for calib in (f"text:{texts['calib']}", f"media:{tmp_path / 'media'}"):
        out = tmp_path / f"out-{calib[:4]}"
        code, _, err = cli("quantize", tiny(arch=arch), "-o", out, *QUANT_ARGS, "--calib", calib)
        assert code == 0, err
        report = json.loads((out / "quant_report.json").read_text())
        assert report["calibration"]["source"] == calib
        scaled = json.loads(__import__("safetensors").safe_open(out / RESULTS_FILE, "pt").metadata()["scaled_linears"])
        assert "model.layers.0.self_attn.v_proj" not in scaled  # the tiny LLMs use GQA: no v -> o group
        assert scaled["model.layers.0.input_layernorm"] == [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]


# ---- bad input: a clear error and nothing written ---------------------------------------------------


def _nothing_written(out):
    return not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


@pytest.mark.parametrize("extra,code,message", [
    (("--group-size", 48), 2, "--group-size 48 does not divide model.layers.0.mlp.down_proj's in_features 128; "
                              "group sizes that divide every layer: 32, 64"),
    (("--w-bit", 3), 1, "only 4-bit weights are supported yet"),
    (("--calib", "text:/nonexistent.txt"), 2, "/nonexistent.txt does not exist"),
    (("--calib-media", "/nonexistent/frames"), 1, "/nonexistent/frames does not exist"),
    (("--calib", "pile"), 2, "expected self, text:FILE or media:PATH"),
])
def test_bad_input_is_refused_before_any_work(extra, code, message, tiny, tmp_path, cli):
    out = tmp_path / "out"
    got, _, err = cli("quantize", tiny(), "-o", out, "--group-size", 32, *extra)
    assert got == code and message in err and "Traceback" not in err
    assert _nothing_written(out)


def test_group_size_128_on_a_576_wide_llm_lists_what_works(tmp_path, tiny, copy_of, cli):
    """The demo's case (SmolLM2, hidden 576), from the headers alone."""
    ckpt = copy_of(tiny())
    shapes = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(576, 576, dtype=torch.float16)}
    for f in (ckpt / "llm").glob("*.safetensors"):
        f.unlink()
    save_file(shapes, ckpt / "llm" / "model.safetensors")
    code, _, err = cli("quantize", ckpt, "-o", tmp_path / "out", "--group-size", 128)
    assert code == 2
    assert "--group-size 128 does not divide model.layers.0.self_attn.q_proj's in_features 576" in err
    assert "group sizes that divide every layer: 32, 64" in err and _nothing_written(tmp_path / "out")


def test_an_existing_output_is_kept(tiny, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = cli("quantize", tiny(), "-o", out, *QUANT_ARGS)
    assert code == 2 and "already exists" in err and (out / "keep.txt").read_text() == "mine"


def test_already_quantized_source_is_refused(quantized, tmp_path, cli):
    out, _ = quantized
    code, _, err = cli("quantize", out, "-o", tmp_path / "again", *QUANT_ARGS)
    assert code == 2 and "already AWQ-quantized" in err


def test_an_interrupted_run_leaves_nothing(tiny, tmp_path, cli, monkeypatch):
    import vila_edge.commands.quantize as q

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(q, "save_awq_results", interrupt)  # halfway through writing the folder
    out = tmp_path / "out"
    code, _, err = cli("quantize", tiny(), "-o", out, *QUANT_ARGS)
    assert code == 130 and "interrupted" in err and _nothing_written(out)


def test_non_finite_weights_stop_with_the_layer_named(tiny, copy_of, texts, tmp_path, cli):
    ckpt = copy_of(tiny())
    f = ckpt / "llm" / "model.safetensors"
    state = load_file(f)
    state["model.layers.1.post_attention_layernorm.weight"][3] = float("nan")
    save_file(state, f, metadata={"format": "pt"})
    code, _, err = cli("quantize", ckpt, "-o", tmp_path / "out", *QUANT_ARGS, "--calib", f"text:{texts['calib']}")
    assert code == 1 and "model.layers.1.post_attention_layernorm: the fp model's activations" in err
    assert _nothing_written(tmp_path / "out")
    code, _, err = cli("quantize", ckpt, "-o", tmp_path / "out", *QUANT_ARGS)  # self: the model cannot even sample
    assert code == 1 and "its logits are not finite" in err and "Traceback" not in err
    assert _nothing_written(tmp_path / "out")


def test_shards_and_their_index_load_back(tiny, tmp_path, cli):
    out = tmp_path / "sharded"
    code, _, err = cli("quantize", tiny(), "-o", out, *QUANT_ARGS, "--shard-size", "40KB")
    assert code == 0, err
    index = json.loads((out / "llm" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / "llm" / s).is_file() for s in shards)
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    code, stdout, err = cli("caption", out, "--prompt", "Hello", "--conv-mode", "vicuna_v1", "--max-new-tokens", 3,
                            "--format", "jsonl")
    assert code == 0, err


def test_calibration_text_files(tmp_path):
    from vila_edge.errors import UsageError
    from vila_edge.quant.calib import read_documents

    (tmp_path / "a.txt").write_text("First paragraph.\n\n\nSecond one,\nover two lines.\n")
    assert read_documents(tmp_path / "a.txt") == ["First paragraph.", "Second one,\nover two lines."]
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n"two"\n')
    assert read_documents(tmp_path / "b.jsonl") == ["one", "two"]
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n{"body": 3}\n')
    with pytest.raises(UsageError, match=r"c.jsonl:2: no \"text\" string"):
        read_documents(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text("not json\n")
    with pytest.raises(UsageError, match="d.jsonl:1: not JSON"):
        read_documents(tmp_path / "d.jsonl")


def test_self_calibration_is_seeded(tiny):
    from transformers import AutoTokenizer

    from vila_edge.quant.calib import self_token_blocks

    llm = AutoModelForCausalLM.from_pretrained(tiny() / "llm", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny() / "llm")
    a, b = (self_token_blocks(llm, tok, 3, 20, seed=7, device="cpu") for _ in range(2))
    c = self_token_blocks(llm, tok, 3, 20, seed=8, device="cpu")
    assert a == b and a != c and all(len(block) == 20 and block[0] == tok.bos_token_id for block in a)

"""The published VILA1.5-*-AWQ checkpoints: llm/ holds llm-awq's real-quant dump (vila-1.5-*-w4-g128-awq-v2.pt)
beside an index whose shards are absent. `quantize --allow-pickle` imports it; everything downstream runs what it
writes.

The dumps here are written by an independent implementation of llm-awq's packer (llm_awq_upstream.py), and the
import is read back by an independent AutoAWQ GEMM reader (test_int4.autoawq_dequantize)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from llm_awq_upstream import (
    calculate_zeros_width,
    pseudo_quantize_tensor,
    tinychat_weight,
    unpack_by_index,
    wqlinear_buffers,
    write_dump,
)
from safetensors.torch import load_file, save_file
from test_int4 import autoawq_dequantize

from vila_edge.demo import write_sample_image
from vila_edge.errors import CheckpointError, UnsupportedError
from vila_edge.llm_awq import plan_dump, repack_linear, unpack_qweight, zero_rows

GROUP = 64  # the tiny LLM's in_features are 64 and 128; the published dumps are g128 (tested below on wider shapes)
DUMP = f"vila-1.5-3b-w4-g{GROUP}-awq-v2.pt"
QUICK = ("--quiet", "--vision-calib-images", 8)
ASK = ("--image", None, "--prompt", "Describe the image.", "--max-new-tokens", 12, "--format", "jsonl",
       "--conv-mode", "vicuna_v1")


def make_awq_folder(src, root, arch="llama", group=GROUP):
    """src (a tiny VILA1.5-layout checkpoint) as its -AWQ repo: llm/ keeps config.json, the tokenizer and an index
    naming shards that are not there, beside llm-awq's dump. Returns (folder, {linear: (q, scales, zeros)})."""
    folder = root / "VILA1.5-3b-AWQ"
    shutil.copytree(src, folder)
    llm = folder / "llm"
    names = {}
    for i, f in enumerate(sorted(llm.glob("*.safetensors"))):
        names.update(dict.fromkeys(load_file(f), f"model-0000{i + 1}-of-00002.safetensors"))
    truth = write_dump(llm, llm / f"vila-1.5-3b-w4-g{group}-awq-v2.pt", group)
    for f in llm.glob("*.safetensors"):
        f.unlink()
    (llm / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": names}))
    return folder, truth


@pytest.fixture(scope="module")
def awq_repo(tiny, tmp_path_factory):
    return make_awq_folder(tiny(), tmp_path_factory.mktemp("awq-repo"))


@pytest.fixture(scope="module")
def imported(awq_repo, tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("imported") / "vila-3b-int4"
    code, stdout, err = run_cli("quantize", awq_repo[0], "-o", out, "--allow-pickle", *QUICK)
    assert code == 0, err
    return out, stdout


def oracle_weight(q, scales, zeros, group):
    """(q - z)·s in fp32 from the values llm-awq quantized to: what every reader of the import must get."""
    return (q.float() - zeros.float().repeat_interleave(group, 1)) * scales.float().repeat_interleave(group, 1)


# ---- the packing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group,rows", [(128, 8), (64, 16), (32, 32)])
def test_llm_awqs_packing_comes_back_bit_for_bit(group, rows):
    """K 640: 5 groups of 128 padded to 8 rows, 10 of 64 to 16, 20 of 32 to 32 (calculate_zeros_width)."""
    torch.manual_seed(group)
    w = (torch.randn(24, 640) * 0.3).half()
    w_hat, scales, zeros = pseudo_quantize_tensor(w, group)
    buffers = wqlinear_buffers(w_hat, scales, zeros, group)
    assert buffers["qweight"].shape == (6, 640) and buffers["qweight"].dtype == torch.int16
    assert buffers["scales"].shape == (rows, 24) == buffers["scaled_zeros"].shape and zero_rows(640, group) == rows
    q = unpack_by_index(buffers["qweight"])
    assert int(q.min()) >= 0 and torch.equal(torch.from_numpy(unpack_qweight(buffers["qweight"].numpy())).int(), q)

    gemm = repack_linear(buffers["qweight"], buffers["scales"], buffers["scaled_zeros"], group, "test")
    assert gemm["qweight"].shape == (640, 3) and gemm["qzeros"].shape == (640 // group, 3)
    back = autoawq_dequantize(gemm["qweight"], gemm["qzeros"], gemm["scales"], group).t()
    assert torch.equal(back, oracle_weight(q, scales, zeros, group))
    assert torch.equal(back.half(), w_hat)  # the very weights llm-awq held when it packed them
    # TinyChat's kernels compute q·s + scaled_zero: the same weights to fp16's rounding of -s·z
    tinychat = tinychat_weight(buffers["qweight"], buffers["scales"], buffers["scaled_zeros"], group)
    assert float((tinychat - back).abs().max()) <= 2**-11 * float((scales.float() * zeros.float()).abs().max())


def test_the_padded_rows_are_llm_awqs_for_every_width_and_group():
    for group in (32, 64, 128, 256):
        for k in range(group, 40 * 128 + 1, group):
            assert zero_rows(k, group) == calculate_zeros_width(k, group) * 8, (k, group)
    assert zero_rows(2560, 128) == 24 and zero_rows(13824, 128) == 112  # VILA1.5-3b's hidden, 13b's intermediate


def test_shapes_llm_awq_cannot_pack_and_other_dumps_are_refused_from_the_config():
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
              "num_attention_heads": 2, "vocab_size": 100}
    with pytest.raises(CheckpointError, match=r"self_attn.q_proj is 64×64 by llm/config.json, which llm-awq cannot "
                                               r"pack at g128 \(in_features a multiple of 128"):
        plan_dump(Path("vila-1.5-3b-w4-g128-awq-v2.pt"), config)
    with pytest.raises(CheckpointError, match="out of 8"):
        plan_dump(Path("x-w4-g64-awq-v2.pt"), {**config, "num_attention_heads": 1, "num_key_value_heads": 1,
                                               "head_dim": 12})
    with pytest.raises(UnsupportedError, match="a 3-bit llm-awq dump"):
        plan_dump(Path("x-w3-g64-awq-v2.pt"), config)
    with pytest.raises(UnsupportedError, match="group size 48"):
        plan_dump(Path("x-w4-g48-awq-v2.pt"), config)
    plan = plan_dump(Path("x-w4-g64-awq-v2.pt"), {**config, "model_type": "qwen2"})
    assert plan.tensors["model.layers.0.self_attn.k_proj.bias"] == ((64,), "float")
    assert plan.tensors["model.layers.0.mlp.down_proj.scales"] == ((16, 64), "float")  # 2 groups padded to 16


# ---- the import ----------------------------------------------------------------------------------------------


def test_the_import_holds_the_dumps_weights_bit_for_bit(awq_repo, imported):
    (repo, truth), (out, stdout) = awq_repo, imported
    state = load_file(out / "llm" / "model.safetensors")
    dump = torch.load(repo / "llm" / DUMP, weights_only=True)
    assert set(truth) == {n.rpartition(".")[0] for n in state if n.endswith(".qweight")} and len(truth) == 14
    for base, (q, scales, zeros) in truth.items():
        assert state[f"{base}.qweight"].dtype == torch.int32 and state[f"{base}.scales"].dtype == torch.float16
        w = autoawq_dequantize(state[f"{base}.qweight"], state[f"{base}.qzeros"], state[f"{base}.scales"], GROUP).t()
        assert torch.equal(w, oracle_weight(q, scales, zeros, GROUP)), base
    plain = [n for n in dump if n.rpartition(".")[2] not in ("qweight", "scales", "scaled_zeros")]
    assert "lm_head.weight" in plain and "model.norm.weight" in plain
    for name in plain:  # embeddings, norms, lm_head: fp16 in the dump, and the same bits here
        assert state[name].dtype == torch.float16 and torch.equal(state[name], dump[name]), name

    cfg = json.loads((out / "llm" / "config.json").read_text())
    assert cfg["quantization_config"]["group_size"] == GROUP and cfg["quantization_config"]["version"] == "gemm"
    assert sorted(p.name for p in (out / "llm").iterdir() if "safetensors" in p.name or p.suffix == ".pt") == [
        "model.safetensors"]  # neither the dump nor the dangling index
    assert json.loads((out / "config.json").read_text())["conv_mode"] == "vicuna_v1"  # from the name VILA1.5-3b-AWQ
    report = json.loads((out / "quant_report.json").read_text())
    assert report["method"] == "llm-awq import" and report["linears"] == 14 and report["dump"] == DUMP
    assert (out / "vision" / "vision_w8a8.onnx").is_file() and report["vision"]["held_out"]["cosine_mean"] > 0.99
    assert f"llm-awq's int4 g{GROUP} weights from {DUMP}, 14 linears repacked" in stdout


def test_a_qwen2_dump_keeps_its_qkv_biases(tiny, tmp_path, cli):
    """g32 (the scales padded from 2 and 4 groups to 32 rows), q/k/v biases carried as they are; small shards."""
    repo, truth = make_awq_folder(tiny(arch="qwen2"), tmp_path, group=32)
    out = tmp_path / "out"
    code, _, err = cli("quantize", repo, "-o", out, "--allow-pickle", "--vision", "none", "--quiet", "--shard-size", "64KB")
    assert code == 0, err
    index = json.loads((out / "llm" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards == sorted(p.name for p in (out / "llm").glob("*.safetensors"))
    state = {k: v for f in shards for k, v in load_file(out / "llm" / f).items()}
    assert set(state) == set(index["weight_map"])
    dump = torch.load(next((repo / "llm").glob("*.pt")))
    for base, (q, scales, zeros) in truth.items():
        w = autoawq_dequantize(state[f"{base}.qweight"], state[f"{base}.qzeros"], state[f"{base}.scales"], 32).t()
        assert torch.equal(w, oracle_weight(q, scales, zeros, 32)), base
    biases = [n for n in dump if n.endswith(".bias")]
    assert len(biases) == 6 and all(torch.equal(state[n], dump[n]) for n in biases)


def test_the_import_captions_like_its_dequantised_twin(awq_repo, imported, tiny, copy_of, cli, tmp_path):
    """Greedy tokens of the torch reference on the import == on a plain checkpoint holding the weights llm-awq
    quantized to, dequantised here from the packer's own values."""
    (repo, truth), (out, _) = awq_repo, imported
    twin = copy_of(tiny())
    dump = torch.load(repo / "llm" / DUMP, weights_only=True)
    plain = {n: t.float() for n, t in dump.items() if n.rpartition(".")[2] not in ("qweight", "scales", "scaled_zeros")}
    plain |= {f"{base}.weight": oracle_weight(*values, GROUP) for base, values in truth.items()}
    for f in (twin / "llm").glob("*.safetensors"):
        f.unlink()
    save_file(plain, twin / "llm" / "model.safetensors")
    image = write_sample_image(tmp_path / "scene.png", size=96)
    answers = []
    for ckpt in (out, twin):
        code, stdout, err = cli("caption", ckpt, *_ask(image))
        assert code == 0, err
        answers.append(json.loads(stdout)["token_ids"])
    assert answers[0] == answers[1] and len(answers[0]) > 0


def _ask(image):
    return [image if a is None else a for a in ASK]


def test_engines_built_from_the_import_caption_and_bench_without_torch(imported, cli, tmp_path):
    from conftest import cli_without_quantize_extra

    out, _ = imported
    engine = tmp_path / "cpu"
    code, _, err = cli("build-engine", out, "-o", engine, "--target", "cpu", "--lm-head", "fp16")
    assert code == 0, err
    image = write_sample_image(tmp_path / "scene.png", size=96, seed=3)
    code, stdout, err = cli("caption", out, "--backend", "onnx", *_ask(image))  # the same W8A8 vision, torch LLM
    assert code == 0, err
    reference = json.loads(stdout)
    (code, stdout, err), (bench_code, _, bench_err) = cli_without_quantize_extra(
        ["caption", engine, *_ask(image), "--activations", "fp32", "--kv-cache", "fp32"],
        ["bench", engine, "--prompt-len", 128, "--gen-len", 4, "--images", 1, "--repeat", 1, "--warmup", 0,
         "--threads", 1, "--format", "json"])
    assert code == 0, err
    assert json.loads(stdout)["token_ids"] == reference["token_ids"] and len(reference["token_ids"]) > 0
    assert bench_code == 0, bench_err


def test_a_gpu_bundle_from_the_import_keeps_llm_awqs_int4_values(awq_repo, imported, cli, tmp_path):
    """TensorRT-LLM's signed int4 is q - 8 (export/trtllm_checkpoint.py); run_cli holds its checkpoint to the load
    rules."""
    from vila_edge.export.trtllm_checkpoint import unpack_int4_rows

    (_, truth), (out, _) = awq_repo, imported
    bundle = tmp_path / "vila-orin"
    code, _, err = cli("build-engine", out, "-o", bundle, "--target", "orin", "--conv-mode", "vicuna_v1")
    assert code == 3, err
    tensors = load_file(bundle / "trtllm_checkpoint" / "rank0.safetensors")
    q, scales, _ = truth["model.layers.1.mlp.down_proj"]
    weights = tensors["transformer.layers.1.mlp.proj.weight"].numpy()
    np.testing.assert_array_equal(unpack_int4_rows(weights) + 8, q.numpy())
    np.testing.assert_array_equal(tensors["transformer.layers.1.mlp.proj.weights_scaling_factor"].numpy(),
                                  scales.numpy())


# ---- refusals -------------------------------------------------------------------------------------------------


def _one_line(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_without_allow_pickle_the_dump_is_refused_naming_the_option(awq_repo, cli, tmp_path):
    code, _, err = cli("quantize", awq_repo[0], "-o", tmp_path / "out", *QUICK)
    assert code == 1 and _one_line(err) and "--allow-pickle" in err and DUMP in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize("argv", [["inspect"], ["caption", "--prompt", "Hi", "--allow-pickle"]])
def test_other_commands_name_the_import(argv, awq_repo, cli):
    """Not "shard … missing": the folder is recognised, and the message gives the command that imports it."""
    code, _, err = cli(argv[0], awq_repo[0], *argv[1:])
    assert code == 1 and _one_line(err) and "llm-awq" in err
    assert f"vila-edge quantize {awq_repo[0]} -o OUT --allow-pickle" in err


def _bigger_mlp(llm):
    cfg = json.loads((llm / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 256}))


def _v1_keys(llm):
    state = torch.load(llm / DUMP, weights_only=True)
    state["model.layers.0.mlp.up_proj.qzeros"] = torch.zeros(1, 16, dtype=torch.int32)
    torch.save(state, llm / DUMP)


def _shifted_zeros(llm):  # the -8 shift from_linear's commented-out line would have applied
    state = torch.load(llm / DUMP, weights_only=True)
    name = "model.layers.1.self_attn.o_proj"
    state[f"{name}.scaled_zeros"] += 8 * state[f"{name}.scales"]
    torch.save(state, llm / DUMP)


def _not_tensors(llm):
    torch.save({"model": torch.nn.Identity()}, llm / DUMP)


@pytest.mark.parametrize("damage,message", [
    (_bigger_mlp, "model.layers.0.mlp.gate_proj.qweight is int16 [32, 64], where int16 [64, 64] follows from "
                  "llm/config.json (2 layers, hidden 64, intermediate 256"),
    (_v1_keys, "an llm-awq v1 dump (int32 qweight with qzeros); repack it to v2 with llm-awq's "
               "tinychat/offline-weight-repacker.py"),
    (_shifted_zeros, "model.layers.1.self_attn.o_proj: scales and scaled_zeros are not what llm-awq's WQLinear writes"),
    (_not_tensors, "holds more than tensors"),
])
def test_a_dump_that_does_not_fit_is_refused_in_one_line_and_nothing_is_written(damage, message, awq_repo, copy_of,
                                                                                  cli, tmp_path):
    repo = copy_of(awq_repo[0])
    damage(repo / "llm")
    out = tmp_path / "out"
    code, _, err = cli("quantize", repo, "-o", out, "--allow-pickle", "--vision", "none", "--quiet")
    assert code == 1 and _one_line(err) and message in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_an_import_refuses_options_that_ask_for_a_search(awq_repo, cli, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("Some text to calibrate on.\n")
    code, _, err = cli("quantize", awq_repo[0], "-o", tmp_path / "out", "--allow-pickle", "--calib", f"text:{notes}")
    assert code == 2 and _one_line(err) and "imported, not searched" in err and not (tmp_path / "out").exists()

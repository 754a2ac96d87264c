"""GPU targets on a CPU: the TensorRT-LLM checkpoint (dequantised back to the AWQ weights), the portable
bundle and exit 3, dry runs, the fake-id prompt, and the refusals of engines from elsewhere."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from vila_edge import IMAGE_TOKEN_INDEX
from vila_edge.awq_checkpoint import dequantize_state
from vila_edge.checkpoint import load_checkpoint
from vila_edge.device import l4t_release
from vila_edge.export.common import llm_spec, read_llm_state
from vila_edge.export.trt_qdq import qdq_problems
from vila_edge.export.trtllm_checkpoint import (
    dequantize_checkpoint,
    pack_int4_rows,
    trtllm_config,
    trtllm_tensors,
    unpack_int4_rows,
)
from vila_edge.int4 import unpack_awq_gemm
from vila_edge.runtime.trt import check_engine, engine_mismatches, fake_prompt, table_prompt
from vila_edge.safetensors_header import read_header

ORIN_ENV = {"tensorrt": "10.3.0", "tensorrt_llm": "0.12.0", "cuda": "12.6", "gpu": "Orin", "sm": 87, "l4t": "36.4.0"}


# ---- the TensorRT-LLM checkpoint ----------------------------------------------------------------


def test_int4_rows_pack_as_modelopt_does():
    """Even output row in the low nibble, odd in the high, two's complement (ModelOpt's W4A16_AWQ export)."""
    q = np.array([[-8, 7], [1, -1], [3, 0], [-2, 5]], np.int8)  # 4 out rows, 2 in
    packed = pack_int4_rows(q)
    assert packed.shape == (2, 2) and packed.dtype == np.int8
    assert packed.view(np.uint8)[0, 0] == (0x8 | 0x1 << 4) and packed.view(np.uint8)[0, 1] == (0x7 | 0xF << 4)
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, (64, 96)).astype(np.int8)
    np.testing.assert_array_equal(unpack_int4_rows(pack_int4_rows(q)), q)


@pytest.mark.parametrize("arch,group", [("llama", 64), ("qwen2", 64)])
def test_the_checkpoint_dequantises_to_the_awq_weights(arch, group, awq):
    """Every HF weight comes back: the int4 values and fp16 scales bit for bit, the zero point within fp16's rounding
    of (8 - z)·scale, so q·scale + zero equals the AWQ dequantisation to ~1e-3 of the weights' range."""
    ckpt = load_checkpoint(awq(arch, group))
    spec, state = llm_spec(ckpt), read_llm_state(ckpt)
    tensors, config = trtllm_tensors(state, spec), trtllm_config(spec)
    reference = {k: v.numpy() for k, v in dequantize_state({k: torch.from_numpy(v) for k, v in state.items()}, torch.float32).items()}
    back = dequantize_checkpoint(tensors, config)
    expected = set(reference) | ({"lm_head.weight"} if spec["tie_word_embeddings"] else set())
    assert set(back) == expected
    for name, w in back.items():
        ref = reference.get(name, reference["model.embed_tokens.weight"])
        assert w.shape == ref.shape, name
        np.testing.assert_allclose(w, ref, rtol=0, atol=2e-3 * float(np.abs(ref).max()) + 1e-6, err_msg=name)

    prefix = "model.layers.1.self_attn.o_proj"
    q, scales, zeros = unpack_awq_gemm(*(torch.from_numpy(state[f"{prefix}.{s}"]) for s in ("qweight", "qzeros", "scales")))
    dense = "transformer.layers.1.attention.dense"
    np.testing.assert_array_equal(unpack_int4_rows(tensors[f"{dense}.weight"]) + 8, q.numpy())
    np.testing.assert_array_equal(tensors[f"{dense}.weights_scaling_factor"], scales.numpy().astype(np.float16))
    zero = (8 - zeros.numpy().astype(np.float32)) * scales.numpy()
    np.testing.assert_allclose(tensors[f"{dense}.zero"].astype(np.float32).T, zero, rtol=2**-11, atol=1e-7)


def test_tensor_names_and_shapes_are_tensorrt_llms(awq):
    ckpt = load_checkpoint(awq("qwen2", 64))
    spec = llm_spec(ckpt)
    tensors = trtllm_tensors(read_llm_state(ckpt), spec)
    h, i, g = spec["hidden"], spec["intermediate"], spec["group_size"]
    qkv = (spec["heads"] + 2 * spec["kv_heads"]) * spec["head_dim"]
    layer = "transformer.layers.0"
    assert tensors[f"{layer}.attention.qkv.weight"].shape == (qkv // 2, h)
    assert tensors[f"{layer}.attention.qkv.weights_scaling_factor"].shape == (qkv, h // g)
    assert tensors[f"{layer}.attention.qkv.zero"].shape == (h // g, qkv)
    assert tensors[f"{layer}.attention.qkv.bias"].shape == (qkv,)  # Qwen2's q/k/v bias
    assert tensors[f"{layer}.mlp.fc.weight"].shape == tensors[f"{layer}.mlp.gate.weight"].shape == (i // 2, h)
    assert tensors[f"{layer}.mlp.proj.weight"].shape == (h // 2, i)
    for name in ("input_layernorm", "post_layernorm"):
        assert tensors[f"{layer}.{name}.weight"].dtype == np.float16
    assert {"transformer.vocab_embedding.weight", "transformer.ln_f.weight", "lm_head.weight"} <= set(tensors)
    # TensorRT-LLM's GatedMLP puts the activation on fc: fc must be gate_proj, gate must be up_proj
    state = read_llm_state(ckpt)
    gate_q = unpack_awq_gemm(*(torch.from_numpy(state[f"model.layers.0.mlp.gate_proj.{s}"]) for s in ("qweight", "qzeros", "scales")))[0]
    np.testing.assert_array_equal(unpack_int4_rows(tensors[f"{layer}.mlp.fc.weight"]) + 8, gate_q.numpy())


def test_config_fields():
    spec = {"architecture": "llama", "group_size": 128, "hidden": 2560, "intermediate": 6912, "heads": 20, "kv_heads": 20,
            "head_dim": 128, "layers": 32, "vocab": 32000, "rms_eps": 1e-5, "max_position_embeddings": 4096, "qkv_bias": False,
            "rope": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}}
    c = trtllm_config(spec)
    assert c["architecture"] == "LlamaForCausalLM" and c["dtype"] == "float16"
    assert c["quantization"] == {"quant_algo": "W4A16_AWQ", "kv_cache_quant_algo": None, "group_size": 128,
                                 "has_zero_point": True, "pre_quant_scale": False, "exclude_modules": ["lm_head"]}
    assert c["mapping"] == {"world_size": 1, "tp_size": 1, "pp_size": 1}
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]) == (2560, 32, 20, 20)
    assert c["rotary_scaling"] == {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192}
    assert trtllm_config({**spec, "architecture": "qwen2", "qkv_bias": True})["qwen_type"] == "qwen2"
    from vila_edge.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="multiples of 128"):
        trtllm_config({**spec, "intermediate": 6900})
    with pytest.raises(UnsupportedError, match="groups of 64 or 128"):
        trtllm_config({**spec, "group_size": 32})
    with pytest.raises(UnsupportedError, match="head size 16: TensorRT-LLM's attention kernel runs head sizes 32, 48"):
        trtllm_config({**spec, "head_dim": 16, "hidden": 320})
    with pytest.raises(UnsupportedError, match="attention.dense input 1600"):  # an explicit head_dim: heads·hd ≠ hidden
        trtllm_config({**spec, "head_dim": 80})


def test_a_group_size_tensorrt_llm_cannot_run_is_refused_before_writing(awq, tmp_path, cli):
    for dry in ((), ("--dry-run",)):
        code, _, err = cli("build-engine", awq("llama", 32), "-o", tmp_path / "e", "--target", "orin", *dry)
        assert code == 1 and "re-quantize with --group-size 128" in err and not list(tmp_path.iterdir())


# ---- the bundle ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(awq, tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("bundles") / "vila-orin"
    code, _, err = run_cli("build-engine", awq("llama", 64), "-o", out, "--target", "orin", "--conv-mode", "vicuna_v1")
    assert code == 3, err
    return out, err


def test_without_tensorrt_build_engine_leaves_a_complete_bundle_and_exits_3(bundle):
    out, err = bundle
    assert "Traceback" not in err and "tensorrt does not import" in err
    assert f"sh {out.name}/build.sh" in err and f"scp -r {out}" in err and "JetPack 6.1" in err
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == {"manifest.json", "build.sh", "recipe.json", "trtllm_checkpoint/config.json",
                     "trtllm_checkpoint/rank0.safetensors", "vision/vision_w8a8_fp16.onnx", "tokenizer/tokenizer.json",
                     "tokenizer/tokenizer_meta.json"}
    assert not list(out.parent.glob(".vila-orin.tmp-*"))
    header = read_header(out / "trtllm_checkpoint/rank0.safetensors")
    assert header["transformer.layers.0.attention.qkv.weight"]["dtype"] == "I8"
    assert header["transformer.layers.0.attention.qkv.weights_scaling_factor"]["dtype"] == "F16"
    config = json.loads((out / "trtllm_checkpoint/config.json").read_text())
    assert config["quantization"]["quant_algo"] == "W4A16_AWQ" and config["quantization"]["group_size"] == 64

    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "bundle" and m["target"] == "orin" and m["text"]["conv_mode"] == "vicuna_v1"
    assert m["limits"] == {"max_batch": 1, "max_input_len": 511, "max_seq_len": 512, "max_multimodal_len": 9, "images": 1,
                           "tower_batch": 1, "max_tiles": None, "projector_batch": 0}
    assert m["quantization"]["group_size"] == 64 and m["llm"]["architecture_trtllm"] == "LlamaForCausalLM"
    assert m["vision"]["precision"] == "int8" and m["vision"]["onnx"] == "vision/vision_w8a8_fp16.onnx"
    assert "tensorrt_fp16" not in m["vision"]  # quantize wrote it and checked it: copied as it is
    assert m["source"]["fingerprint"] and m["memory_plan"]["total_gb"] < m["memory_plan"]["usable_gb"]
    assert json.loads((out / "recipe.json").read_text())["tokens_per_image"] == 9


def test_the_build_script_runs_build_engine_on_the_device(bundle, tmp_path):
    out, _ = bundle
    script = (out / "build.sh").read_text()
    assert os.access(out / "build.sh", os.X_OK)
    assert 'exec vila-edge build-engine "$bundle" -o "$out" --target orin' in script
    assert "trtllm-build --checkpoint_dir trtllm_checkpoint" in script and "--max_multimodal_len 9" in script
    assert "--use_fused_mlp" not in script
    # with a stand-in vila-edge on PATH that records its arguments, the script passes the bundle and the output
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "vila-edge").write_text('#!/bin/sh\necho "$@" > "$RECORD"\n')
    (fake / "vila-edge").chmod(0o755)
    import subprocess

    env = {**os.environ, "PATH": f"{fake}:/usr/bin:/bin", "RECORD": str(tmp_path / "args")}
    subprocess.run(["sh", str(out / "build.sh"), str(tmp_path / "engine")], env=env, check=True)
    assert (tmp_path / "args").read_text().split() == ["build-engine", str(out.resolve()), "-o", str(tmp_path / "engine"),
                                                      "--target", "orin"]


def test_a_bundle_is_not_an_engine_yet(bundle, cli):
    out, _ = bundle
    code, _, err = cli("caption", out, "--prompt", "hi")
    assert code != 0 and "portable bundle" in err and "build.sh" in err and "Traceback" not in err
    code, _, err = cli("build-engine", out, "-o", out.parent / "engine", "--target", "orin")
    assert code == 1 and "cannot build" in err and "tensorrt does not import" in err
    assert not (out.parent / "engine").exists()
    code, _, err = cli("build-engine", out, "-o", out.parent / "engine", "--target", "orin", "--max-seq-len", 256)
    assert code == 2 and "is a bundle" in err
    code, plan, _ = cli("build-engine", out, "-o", out.parent / "engine", "--target", "orin-nano", "--dry-run")
    assert code == 0 and "on orin-nano" in plan and "--max_seq_len 512 " in plan  # the same weights, another device


def test_inspect_shows_a_bundle_and_what_to_run_next(bundle, cli):
    out, _ = bundle
    code, text, err = cli("inspect", out)
    assert code == 0, err
    assert "(orin bundle from " in text and "int8 ONNX" in text and "memory plan  " in text
    assert f"sh {out}/build.sh" in text


def test_fp16_vision_and_text_only_bundles(awq, tmp_path, cli):
    code, _, err = cli("build-engine", awq("llama", 64), "-o", tmp_path / "fp16", "--target", "rtx4090", "--vision", "fp16")
    assert code == 3, err
    m = json.loads((tmp_path / "fp16/manifest.json").read_text())
    assert m["vision"]["precision"] == "fp16" and (tmp_path / "fp16" / m["vision"]["onnx"]).name == "vision_fp16.onnx"
    assert qdq_problems(onnx.load(tmp_path / "fp16" / m["vision"]["onnx"]), "float16") == []
    assert "JetPack" not in err and "'tensorrt_llm>=1.0,<1.3'" in err
    code, _, err = cli("build-engine", awq("llama", 64), "-o", tmp_path / "text", "--target", "orin-nano", "--vision", "none")
    m = json.loads((tmp_path / "text/manifest.json").read_text())
    assert code == 3 and m["vision"] is None and m["limits"]["max_multimodal_len"] == 0
    code, _, err = cli("build-engine", awq("llama", 64), "-o", tmp_path / "cpu", "--target", "cpu", "--vision", "fp16")
    assert code == 2 and "--vision w8a8-dynamic|w8a8|fp32|none" in err


def test_every_vision_onnx_a_bundle_carries_meets_tensorrts_qdq_rules_in_fp16(bundle):
    """The GPU audit's item 5: the plan runs in the ONNX's float type, so the bundle's must be float16."""
    out, _ = bundle
    files = sorted((out / "vision").glob("*.onnx"))
    assert [f.name for f in files] == ["vision_w8a8_fp16.onnx"]
    for f in files:
        assert qdq_problems(onnx.load(f), "float16") == []


def test_a_checkpoint_quantized_before_the_fp16_files_gets_them_converted_in_the_bundle(awq, copy_of, tmp_path, cli):
    old = copy_of(awq("llama", 64))
    for f in ("vision_w8a8_fp16.onnx", "vision_fp16.onnx"):
        (old / "vision" / f).unlink()
    for vision, name in (("w8a8", "vision_w8a8_fp16.onnx"), ("fp16", "vision_fp16.onnx")):
        code, _, err = cli("build-engine", old, "-o", tmp_path / vision, "--target", "orin", "--vision", vision,
                           "--conv-mode", "vicuna_v1")
        assert code == 3, err
        m = json.loads((tmp_path / vision / "manifest.json").read_text())
        check = m["vision"]["tensorrt_fp16"]
        assert m["vision"]["onnx"] == f"vision/{name}" and check["file"] == name and check["converted_by"]
        assert check["cosine_min"] > (0.99 if vision == "w8a8" else 0.999)
        assert qdq_problems(onnx.load(tmp_path / vision / "vision" / name), "float16") == []
    assert not (old / "vision" / "vision_fp16.onnx").exists()  # the source checkpoint is only read


def test_a_bundle_with_an_fp32_vision_onnx_is_refused_before_the_llm_build(bundle, copy_of, awq):
    """A bundle from before the fp16 files carried vision_fp32.onnx for --vision fp16: TensorRT would build it in fp32."""
    from vila_edge.errors import CheckpointError
    from vila_edge.export.trt_engine import build_from_bundle
    from vila_edge.targets import get_target

    old = copy_of(bundle[0])
    (old / "vision" / "vision_w8a8_fp16.onnx").unlink()
    shutil.copy2(awq("llama", 64) / "vision" / "vision_fp32.onnx", old / "vision")
    m = json.loads((old / "manifest.json").read_text())
    m["vision"] |= {"onnx": "vision/vision_fp32.onnx", "precision": "fp16"}
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="vision_fp32.onnx: not what TensorRT builds strongly typed in float16: "
                                              "float type is float32.*re-make .* with this vila-edge"):
        build_from_bundle(old, old.parent / "engine", get_target("orin"), ORIN_ENV, m["limits"], False)
    assert not (old.parent / "engine").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(awq, tmp_path, cli):
    code, out, _ = cli("build-engine", awq("llama", 64), "-o", tmp_path / "e", "--target", "orin-nano", "--dry-run")
    assert code == 0 and "fits" in out and "would run: trtllm-build" in out and "exit 3" in out
    assert "--max_seq_len 512" in out  # the target's 1536, shortened to the model's 512 positions
    code, out, _ = cli("build-engine", awq("llama", 64), "-o", tmp_path / "e", "--target", "orin-nano", "--dry-run",
                       "--max-batch", 100000)
    assert code == 1 and "does NOT fit" in out
    code, _, err = cli("build-engine", awq("llama", 64), "-o", tmp_path / "e", "--target", "orin-nano", "--max-batch", 100000)
    assert code == 1 and "would not fit" in err and "does NOT fit" in err
    code, _, err = cli("build-engine", awq("llama", 64), "-o", tmp_path / "e", "--target", "orin", "--max-seq-len", 4096)
    assert code == 2 and "512 positions" in err
    assert not list(tmp_path.iterdir())


# ---- running: what can be checked without a GPU ----------------------------------------------------


def test_image_blocks_become_ids_past_the_vocabulary():
    """As TensorRT-LLM's VILA runner: image k's tokens are vocab + k·T ... vocab + (k+1)·T - 1, looked up in the
    prompt table; NVILA's image-end text follows each block."""
    ids = [1, 5, IMAGE_TOKEN_INDEX, 6, IMAGE_TOKEN_INDEX, 7]
    got = fake_prompt(ids, 2, 3, 100, image_end_ids=[])
    assert got.tolist() == [1, 5, 100, 101, 102, 6, 103, 104, 105, 7] and got.dtype == np.int32
    assert fake_prompt(ids, 2, 3, 100, image_end_ids=[13]).tolist() == [1, 5, 100, 101, 102, 13, 6, 103, 104, 105, 13, 7]
    assert fake_prompt([1, 2], 0, 196, 100, []).tolist() == [1, 2]


def test_the_prompt_table_holds_the_image_rows_in_order_within_the_engines_limits():
    embeds = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    limits = {"images": 2, "max_multimodal_len": 6, "max_input_len": 12}
    p = table_prompt([1, IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX, 2], embeds, 100, [], limits)
    assert p.ids.tolist() == [1, 100, 101, 102, 103, 104, 105, 2] and len(p) == 8
    assert p.table.shape == (1, 6, 4)  # one prompt task: ModelRunnerCpp indexes the table by task
    np.testing.assert_array_equal(p.table[0, 4], embeds[1, 1])  # row k is fake id vocab + k
    assert table_prompt([1, 2], None, 100, [], limits).table is None
    with pytest.raises(Exception, match="built for 1 .* --images 2"):
        table_prompt([1, IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX], embeds, 100, [], {**limits, "images": 1, "max_multimodal_len": 3})
    with pytest.raises(Exception, match="takes 7 .*--max-input-len"):
        table_prompt([1, IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX, 2], embeds, 100, [], {**limits, "max_input_len": 7})


def test_engines_from_another_gpu_or_library_version_are_refused():
    assert engine_mismatches(ORIN_ENV, ORIN_ENV | {"gpu": "Orin (nvgpu)", "cuda": "12.6.1"}) == []
    diffs = engine_mismatches(ORIN_ENV, {"tensorrt": "10.7.0", "tensorrt_llm": "0.12.0", "sm": 89})
    assert diffs == ["GPU architecture sm_87 (engine) vs sm_89 (here)", "TensorRT 10.3.0 (engine) vs 10.7.0 (here)"]
    manifest = {"target": "orin", "built_with": ORIN_ENV, "source": {"bundle": "/data/vila-orin"}}
    with pytest.raises(Exception, match=r"TensorRT-LLM 0.12.0 \(engine\) vs none \(here\).*vila-edge build-engine "
                                        r"/data/vila-orin -o NEW_ENGINE --target orin"):
        check_engine(Path("e"), manifest, {"tensorrt": "10.3.0", "sm": 87})
    check_engine(Path("e"), manifest, ORIN_ENV)


def test_a_gpu_engine_here_says_what_is_missing(bundle, copy_of, cli):
    engine = copy_of(bundle[0])
    m = json.loads((engine / "manifest.json").read_text())
    m |= {"kind": "engine", "built_with": ORIN_ENV, "llm": {**m["llm"], "engine_dir": "llm"}}
    (engine / "manifest.json").write_text(json.dumps(m))
    code, _, err = cli("caption", engine, "--prompt", "hi")
    assert code == 1 and "TensorRT engine for orin" in err and "tensorrt does not import" in err and "Traceback" not in err
    code, _, err = cli("caption", engine, "--prompt", "hi", "--backend", "cpu")
    assert code == 2 and "trt engine" in err
    code, _, err = cli("bench", engine)
    assert code == 1 and "TensorRT engine" in err and "Traceback" not in err


def test_l4t_release_is_read_from_nv_tegra_release():
    text = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    assert l4t_release(text) == "36.4.3"
    assert l4t_release("garbage") is None


def test_a_missing_source_for_a_gpu_target_is_a_clear_error(cli, tmp_path):
    code, _, err = cli("build-engine", tmp_path / "absent", "-o", tmp_path / "e", "--target", "h100")
    assert code != 0 and "Traceback" not in err and re.search(r"absent: no such checkpoint folder", err)
    assert not (tmp_path / "e").exists()


def test_build_engine_takes_a_bundle_of_this_format_and_not_an_engine(bundle, copy_of, cli, tmp_path):
    old = copy_of(bundle[0])
    m = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps(m | {"format_version": 0}))
    code, _, err = cli("build-engine", old, "-o", tmp_path / "e", "--target", "orin", "--dry-run")
    assert code == 1 and "engine format 0" in err and "older format" in err
    (old / "manifest.json").write_text(json.dumps(m | {"kind": "engine", "target": "cpu"}))
    code, _, err = cli("build-engine", old, "-o", tmp_path / "e", "--target", "orin")
    assert code == 2 and "already an engine (for cpu)" in err

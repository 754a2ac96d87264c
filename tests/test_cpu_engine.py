"""The C++ cpu engine: each kernel table against numpy, the repacking, the engine against the
torch reference on the same dequantised weights, torch-free captioning, and every refusal."""

import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from vila_edge import _runtime
from vila_edge.checkpoint import load_checkpoint
from vila_edge.errors import UsageError
from vila_edge.export.cpu_engine import int8_rows, llm_tensors, pack_pairs, unpack_pairs
from vila_edge.int4 import pack_awq_gemm, quantize_groups
from vila_edge.model.vlm import VilaModel
from vila_edge.runtime.cpu import CpuEngine

KERNELS = _runtime.supported_kernels()
QUANT = ("--n-samples", 2, "--seqlen", 32, "--no-clip", "--quiet")


def dequantized_activations(x):
    q, d = _runtime.quantize_activations(x)
    return (q.astype(np.float32).reshape(len(x), -1, 32) * d[..., None]).reshape(x.shape)


def random_q4(rng, n, k, group):
    q = rng.integers(0, 16, (n, k)).astype(np.uint8)
    scales = (rng.random((n, k // group)) * 0.05 + 1e-3).astype(np.float16)
    zeros = rng.integers(0, 16, (n, k // group)).astype(np.uint8)
    w = (q.astype(np.float32) - np.repeat(zeros, group, 1)) * np.repeat(scales.astype(np.float32), group, 1)
    return (pack_pairs(q), scales.view(np.uint16), zeros), w


def close(y, ref, tol=2e-5):
    return np.abs(y - ref).max() <= tol * max(np.abs(ref).max(), 1e-6)


# ---- kernels ------------------------------------------------------------------------------------


def test_this_machine_runs_the_reference_and_its_best_table():
    assert KERNELS[0] == "ref" and _runtime.best_kernels() == KERNELS[-1]
    assert _runtime.cpu_name()


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("m,n,k,group", [(1, 48, 576, 32), (1, 17, 96, 32), (3, 33, 160, 32), (4, 16, 128, 64),
                                         (5, 40, 1536, 64), (9, 21, 256, 128), (6, 19, 160, 32), (1, 3, 32, 32)])
def test_int4_matmul_against_numpy(kernels, m, n, k, group):
    rng = np.random.default_rng(k + n + m)
    packed, w = random_q4(rng, n, k, group)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = _runtime.q4_matmul(x, *packed, kernels)
    assert close(y, dequantized_activations(x) @ w.T)  # exact up to float summation order
    assert np.abs(y - x @ w.T).max() < 0.03 * np.abs(x @ w.T).max()  # int8 activations cost little


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("m,n,k", [(1, 33, 576), (4, 16, 64), (6, 5, 96), (1, 1, 32)])
def test_int8_and_fp16_matmul_against_numpy(kernels, m, n, k):
    rng = np.random.default_rng(n * k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    q, s = int8_rows(w)
    w8 = (q.astype(np.float32).reshape(n, -1, 32) * s.astype(np.float32)[..., None]).reshape(n, k)
    assert close(_runtime.q8_matmul(x, q, s.view(np.uint16), kernels), dequantized_activations(x) @ w8.T)
    w16 = w.astype(np.float16)
    assert close(_runtime.f16_matmul(x, w16.view(np.uint16), kernels), x @ w16.astype(np.float32).T)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("m,n,k,group", [(1, 17, 96, 32), (3, 33, 576, 64), (2, 5, 256, 128)])
def test_int4_matmul_with_float_activations_is_exact(kernels, m, n, k, group):
    rng = np.random.default_rng(k * n)
    packed, w = random_q4(rng, n, k, group)
    x = rng.standard_normal((m, k)).astype(np.float32)
    assert close(_runtime.q4_matmul_f32(x, *packed, kernels), x @ w.T)


def test_activation_blocks_round_to_the_nearest_step():
    x = np.random.default_rng(0).standard_normal((3, 160)).astype(np.float32)
    x[1, :64] = 0  # an all-zero pair of blocks
    q, d = _runtime.quantize_activations(x)
    assert (d[:, 0] == d[:, 1]).all() and (d[:, 2] == d[:, 3]).all()  # pairs of blocks share a scale
    np.testing.assert_allclose(d[:, 4], np.abs(x[:, 128:]).max(axis=1) / 127)  # an odd last block has its own
    assert d[1, 0] == 0 and not q[1, :64].any()
    assert np.abs(dequantized_activations(x) - x).max() <= d.max() / 2 + 1e-7


@pytest.mark.parametrize("kernels", KERNELS[1:])
def test_every_table_quantizes_activations_to_the_same_bits(kernels):
    x = np.random.default_rng(1).standard_normal((5, 608)).astype(np.float32) * 3
    for a, b in zip(_runtime.quantize_activations(x, kernels), _runtime.quantize_activations(x, "ref")):
        np.testing.assert_array_equal(a, b)


def test_kernel_entry_points_refuse_bad_input():
    x = np.ones((1, 64), np.float32)
    with pytest.raises(ValueError, match="not available"):
        _runtime.q4_matmul(x, np.zeros((1, 32), np.uint8), np.zeros((1, 2), np.uint16), np.zeros((1, 2), np.uint8), "sse9")
    with pytest.raises(ValueError, match="multiple of 32"):
        _runtime.quantize_activations(np.ones((1, 33), np.float32))


# ---- repacking ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [64, 96, 576])
def test_pair_packing_round_trips(k):
    q = np.random.default_rng(k).integers(0, 16, (5, k)).astype(np.uint8)
    packed = pack_pairs(q)
    assert packed.shape == (5, -(-k // 64) * 32)
    np.testing.assert_array_equal(unpack_pairs(packed, k), q)
    np.testing.assert_array_equal(packed[:, 5], q[:, 5] | q[:, 37] << 4)  # weights j and 32 + j share byte j
    if k % 64:
        assert not (packed[:, -32:] >> 4).any()  # an odd last block leaves the high nibbles empty


def test_awq_linears_are_repacked_exactly_and_fused():
    """llm_tensors on a one-layer AutoAWQ state: q, k, v stacked in that order (gate, up likewise), the
    nibbles, fp16 scales and zeros unchanged, the tied embedding as an int8 lm_head."""
    torch.manual_seed(0)
    h, i, g = 64, 128, 32
    spec = {"layers": 1, "qkv_bias": False}
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (32, h), "self_attn.v_proj": (32, h),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}
    state, quantized = {}, {}
    for name, (n, k) in shapes.items():
        quantized[name] = quantize_groups(torch.randn(n, k), g)
        state.update({f"model.layers.0.{name}.{key}": t.numpy() for key, t in pack_awq_gemm(*quantized[name]).items()})
    for name in ("model.norm.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"):
        state[name] = torch.rand(h).half().numpy()
    state["model.embed_tokens.weight"] = torch.randn(100, h).half().numpy()
    tensors = llm_tensors(state, spec)
    for fused, parts in {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}.items():
        names = [next(n for n in shapes if n.endswith(f".{p}_proj")) for p in parts]
        q, scales, zeros = (torch.cat(t).numpy() for t in zip(*(quantized[n] for n in names)))
        np.testing.assert_array_equal(unpack_pairs(tensors[f"layers.0.{fused}.q"], h), q)
        np.testing.assert_array_equal(tensors[f"layers.0.{fused}.scales"], scales.astype(np.float16))
        np.testing.assert_array_equal(tensors[f"layers.0.{fused}.zeros"], zeros)
    assert tensors["layers.0.qkv.scales"].shape == (h + 64, h // g) and "layers.0.qkv.bias" not in tensors
    q8, s8 = int8_rows(state["model.embed_tokens.weight"])
    np.testing.assert_array_equal(tensors["lm_head.q"], q8)
    np.testing.assert_array_equal(tensors["embed"], state["model.embed_tokens.weight"])


# ---- engines ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(awq, tmp_path_factory):
    """{arch: (quantized checkpoint, cpu engine)} for the tiny Llama (g32) and Qwen2 (g64) checkpoints; an
    fp16 lm_head, so the engine's exact mode computes what the reference does."""
    from conftest import run_cli

    root, built = tmp_path_factory.mktemp("cpu-engines"), {}
    for arch, group in (("llama", 32), ("qwen2", 64)):
        quant, engine = awq(arch, group), root / f"{arch}-cpu"
        code, _, err = run_cli("build-engine", quant, "-o", engine, "--target", "cpu", "--lm-head", "fp16")
        assert code == 0, err
        built[arch] = quant, engine
    return built


def compare_with_reference(quant, engine_dir, steps=32, kernels=None, prompt="Describe the image.", activations="fp32",
                           kv_cache="fp32"):
    """Over a prefill and `steps` greedy decode steps, both sides fed the reference's tokens:
    (max relative logit error, [(reference's top-2 gap, max abs error) at each step whose argmax differs])."""
    ckpt = load_checkpoint(quant)
    ref = VilaModel(ckpt, dtype="float32")
    eng = CpuEngine(engine_dir, threads=2, kernels=kernels, activations=activations, kv_cache=kv_cache)
    ids = ref.tokenizer(prompt).input_ids
    ref.reset(), eng.reset()
    assert np.array_equal(eng.embed(ids), ref.embed(ids).numpy())
    lr, le = ref.prefill(ref.embed(ids)), eng.prefill(eng.embed(ids))
    err, flips = 0.0, []
    for _ in range(steps):
        diff = float(np.abs(lr - le).max())
        err = max(err, diff / float(np.abs(lr).max()))
        if int(lr.argmax()) != int(le.argmax()):
            top2 = np.sort(lr)[-2:]
            flips.append((float(top2[1] - top2[0]), diff))
        token = int(lr.argmax())
        lr, le = ref.decode(token), eng.decode(token)
    return err, flips


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_exact_mode_computes_what_the_reference_computes(arch, engines):
    err, flips = compare_with_reference(*engines[arch])
    assert not flips and err < 1e-4, err


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_int8_activations_stay_close_on_chaotic_tiny_models(arch, engines):
    # initializer_range 0.5 makes hidden states of std ~70 after one layer: a harsh test for int8 blocks
    # sharing one scale per 64 values (on the real SmolLM2 weights the error is 0.03: the demo test)
    err, _ = compare_with_reference(*engines[arch], steps=1, activations="int8")
    assert err < 0.15, err


def test_the_default_int8_lm_head_follows_the_reference(engines, tmp_path, cli):
    quant = engines["qwen2"][0]
    assert cli("build-engine", quant, "-o", tmp_path / "e", "--target", "cpu")[0] == 0
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["quantization"]["lm_head"] == "int8" and manifest["vision"]["precision"] == "w8a8-dynamic"
    err, _ = compare_with_reference(quant, tmp_path / "e", steps=1, activations="int8")
    assert err < 0.15, err


def engine_logits(engine_dir, kernels, activations, ids, steps=4):
    eng = CpuEngine(engine_dir, threads=2, kernels=kernels, activations=activations)
    out = [eng.prefill(eng.embed(ids))]
    for t in ids[:steps]:
        out.append(eng.decode(t))
    return np.stack(out)


@pytest.mark.parametrize("kernels", KERNELS[1:])
@pytest.mark.parametrize("activations", ["fp32", "int8"])
def test_every_kernel_table_agrees_with_the_portable_one(kernels, activations, engines):
    ids = list(range(5, 40))
    ref = engine_logits(engines["qwen2"][1], "ref", activations, ids)
    assert close(engine_logits(engines["qwen2"][1], kernels, activations, ids), ref, tol=1e-4)


def test_any_thread_count_gives_the_same_logits(engines):
    """Chunks are claimed dynamically, so which thread runs which rows varies run to run; every row must
    still be computed exactly once. 7 threads on this machine's cores are descheduled mid-job often."""
    from vila_edge import _runtime

    def run(threads):
        eng = CpuEngine(engines["llama"][1], threads=threads)
        eng.reset()
        out = [eng.prefill(eng.embed(list(range(3, 40))))]
        for token in (5, 9, 11, 2, 7, 30, 4, 8):
            out.append(eng.decode(token))
        return np.stack(out)

    one = run(1)
    for threads in (2, 7, 7):
        np.testing.assert_array_equal(run(threads), one)
    assert _runtime.read_bandwidth(8, 7, 1) > 0  # run(): every thread once, more threads than cores


def test_trim_replays_a_shared_prefix(engines):
    eng = CpuEngine(engines["llama"][1], threads=1)
    x = eng.embed(list(range(3, 20)))
    eng.reset()
    full = eng.prefill(x)
    eng.trim(10)
    assert eng.llm.position == 10
    np.testing.assert_allclose(eng.prefill(x[10:]), full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        eng.trim(99)


def greedy(engine, ids, steps=6):
    """(the prefill's logits, `steps` greedy tokens) for a new sequence."""
    engine.reset()
    logits = first = engine.prefill(engine.embed(ids))
    tokens = []
    for _ in range(steps):
        tokens.append(int(np.argmax(logits)))
        logits = engine.decode(tokens[-1])
    return first, tokens


@pytest.mark.parametrize("kv_cache", ["fp16", "int8"])
def test_a_new_sequence_reuses_the_cached_prefix_with_the_same_logits(engines, kv_cache):
    """Live captioning repeats the system prompt and the text before the image: only the rest is prefilled, and
    each row's arithmetic does not depend on where a prefill chunk starts, so the logits are the uncached path's."""
    cached = CpuEngine(engines["llama"][1], threads=2, kv_cache=kv_cache)
    cold = CpuEngine(engines["llama"][1], threads=2, kv_cache=kv_cache, prefix_reuse=False)
    system = list(range(3, 73))  # 70 positions: more than one prefill chunk (64)
    # PANEL_ROWS (4) rows are always run again: a shorter prefill would take the decode kernels, rounding otherwise
    for ids, reused in ((system + [80, 81, 82], 0), (system + [90, 91], 68), (system[:40] + [7], 37),
                        (system[:40] + [7], 37)):  # the same prompt again
        (got, got_tokens), (want, want_tokens) = greedy(cached, ids), greedy(cold, ids)
        np.testing.assert_array_equal(got, want)
        assert got_tokens == want_tokens and cached.reused_positions == reused and cold.reused_positions == 0
    with pytest.raises(UsageError, match="decode before prefill"):
        cached.reset(), cached.decode(5)


def caption_without_torch(*argv) -> tuple[int, str, str]:
    from conftest import cli_without_quantize_extra

    return cli_without_quantize_extra(argv)[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_engine_captions_like_the_torch_backend_with_torch_unimportable(arch, engines, cli, tmp_path):
    from vila_edge.demo import write_sample_image

    quant, engine = engines[arch]
    image = write_sample_image(tmp_path / "scene.png", size=96, seed=3)
    args = ("--image", image, "--prompt", "Describe the image.", "--temperature", 0, "--max-new-tokens", 12,
            "--format", "jsonl", "--conv-mode", "vicuna_v1")
    code, out, err = cli("caption", quant, "--backend", "onnx", *args)
    assert code == 0, err
    reference = json.loads(out)
    code, out, err = caption_without_torch("caption", engine, *args, "--activations", "fp32", "--kv-cache", "fp32")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["backend"].startswith("cpu")
    assert answer["token_ids"] == reference["token_ids"] and answer["prompt_tokens"] == reference["prompt_tokens"]


def test_bench_reports_its_fields_without_torch(engines, tmp_path, cli):
    from vila_edge.safetensors_header import read_header

    engine, out = engines["qwen2"][1], tmp_path / "results" / "qwen2-cpu.json"
    code, stdout, stderr = caption_without_torch("bench", engine, "--prompt-len", 40, "--gen-len", 4, "--images", 1,
                                                 "--repeat", 2, "--warmup", 0, "--threads", 1, "--format", "json", "-o", out)
    assert code == 0, stderr
    r = json.loads(stdout)
    assert json.loads(out.read_text()) == r and f"wrote {out}" in stderr
    for key in ("ttft_s", "ttft_median_s", "ttft_p90_s", "vision_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb",
                "bandwidth_gb_s", "bytes_per_token_mb", "decode_ceiling_tok_s", "decode_pct_of_ceiling", "weights_mb"):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert r["format"] == "vila-edge-bench" and r["target"] == "cpu" and r["backend"] == "cpu"
    assert r["model"] and r["weights"] == "AWQ int4 g64" and r["precision"].startswith("w4a8 g64, lm_head fp16")
    assert r["text_tokens"] == 40 and r["prompt_tokens"] > 40 and r["threads"] == 1 and r["gen_len"] == 4
    assert r["decode_tokens"] == 3 and len(r["runs"]) == 2 and r["kernels"] == _runtime.best_kernels()
    assert r["kv_cache"] == "fp16"
    assert r["bandwidth_source"] == "measured" and r["gpu_memory_mb"] is None
    # the ceiling: every weight but the embedding table, one row of it, the (fp16) KV cache at the mean decode context
    header, llm = read_header(Path(engine) / "llm.safetensors"), json.loads((Path(engine) / "manifest.json").read_text())["llm"]
    sizes = {name: t["data_offsets"][1] - t["data_offsets"][0] for name, t in header.items()}
    kv = 2 * llm["layers"] * llm["kv_heads"] * llm["head_dim"] * 2 * (r["prompt_tokens"] + 4 / 2)
    per_token = sum(sizes.values()) - sizes["embed"] + 2 * llm["hidden"] + kv
    assert r["bytes_per_token_mb"] == round(per_token / 1e6, 3)
    assert r["decode_ceiling_tok_s"] == pytest.approx(r["bandwidth_gb_s"] * 1e9 / per_token, abs=0.05)
    assert r["decode_pct_of_ceiling"] == pytest.approx(100 * r["decode_tok_s"] / r["decode_ceiling_tok_s"], rel=0.01)
    device = r["device"]
    assert device["cpu"] == {"model": _runtime.cpu_name(), "logical_cpus": os.cpu_count(), "arch": platform.machine()}
    assert r["cpu"].startswith(_runtime.cpu_name())
    assert device["jetson"] is None and "not a Jetson" in device["jetson_note"]  # this machine is no Jetson
    # bench-table reads it: one row, one column
    code, table, err = cli("bench-table", out.parent)
    assert code == 0, err
    assert f"| {r['model']} | AWQ int4 g64 | {r['decode_tok_s']:.1f} |" in table
    assert f"| cpu: {_runtime.cpu_name()} (1 thread) |" in table


def test_bench_takes_a_given_bandwidth_and_prints_the_ceiling(engines, cli):
    args = ("bench", engines["llama"][1], "--prompt-len", 140, "--gen-len", 3, "--repeat", 1, "--threads", 1)
    code, out, err = cli(*args, "--bandwidth-gb-s", 50, "--format", "json")
    assert code == 0, err
    r = json.loads(out)
    assert r["bandwidth_gb_s"] == 50 and r["bandwidth_source"] == "given" and r["images"] == 0 and r["vision_ms"] is None
    assert r["decode_ceiling_tok_s"] == pytest.approx(50e9 / (r["bytes_per_token_mb"] * 1e6), rel=1e-3)
    code, out, err = cli(*args, "--bandwidth-gb-s", 50)
    assert code == 0, err
    assert "% of the bandwidth ceiling" in out and "= 50.0 GB/s (given)" in out and "TTFT" in out


@pytest.mark.parametrize("flags,message", [
    (("--gen-len", 0), "--gen-len must be at least 1"),
    (("--bandwidth-gb-s", 0), "--bandwidth-gb-s above 0"),
    (("--warmup", -1), "--warmup must be 0 or more"),
])
def test_bench_refuses_bad_settings_before_loading(flags, message, engines, cli, tmp_path):
    code, out, err = cli("bench", engines["llama"][1], *flags, "-o", tmp_path / "r.json")
    assert code == 2 and out == "" and message in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


# ---- refusals -----------------------------------------------------------------------------------


def edit_manifest(engine, **changes):
    path = Path(engine) / "manifest.json"
    m = json.loads(path.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        (m[section] if field else m).update({field or section: value})
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("changes,message", [
    ({"target": "tpu"}, "built for target 'tpu'"),
    ({"format_version": 0}, "engine format 0 .* is an older format"),
    ({"llm__layout": "q4-interleaved/0"}, "weight layout"),
])
def test_a_mismatched_manifest_is_refused_with_what_differs(changes, message, engines, copy_of, cli):
    engine = copy_of(engines["llama"][1])
    edit_manifest(engine, **changes)
    code, _, err = cli("caption", engine, "--prompt", "hi", "--max-new-tokens", 2)
    assert code != 0 and "Traceback" not in err
    import re

    assert re.search(message, err) and "build-engine" in err, err


def test_a_truncated_weight_file_is_refused(engines, copy_of, cli):
    engine = copy_of(engines["llama"][1])
    path = engine / "llm.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    code, _, err = cli("caption", engine, "--prompt", "hi")
    assert code != 0 and "truncated" in err and "Traceback" not in err


def test_a_missing_manifest_is_a_checkpoint_question(tmp_path, cli):
    code, _, err = cli("bench", tmp_path)
    assert code != 0 and "manifest.json: missing" in err


def test_build_engine_refusals(engines, tiny, tmp_path, cli):
    quant, engine = engines["llama"]
    code, _, err = cli("build-engine", tiny(), "-o", tmp_path / "e", "--target", "cpu")
    assert code != 0 and "not AWQ-quantized" in err and not (tmp_path / "e").exists()
    code, _, err = cli("build-engine", quant, "-o", engine, "--target", "cpu")
    assert code != 0 and "already exists" in err
    assert not list(tmp_path.glob(".e.tmp-*"))


def test_a_checkpoint_without_vision_onnx_builds_text_only_on_request(tiny, tmp_path, cli):
    quant = tmp_path / "awq"
    assert cli("quantize", tiny(), "-o", quant, "--group-size", 32, *QUANT, "--vision", "fp16")[0] == 0
    code, _, err = cli("build-engine", quant, "-o", tmp_path / "e", "--target", "cpu")
    assert code != 0 and "vision_w8a8.onnx: missing" in err and "--vision none" in err
    assert cli("build-engine", quant, "-o", tmp_path / "e", "--target", "cpu", "--vision", "none", "--lm-head", "fp16")[0] == 0
    code, out, err = cli("caption", tmp_path / "e", "--prompt", "Hello", "--max-new-tokens", 3, "--format", "jsonl")
    assert code == 0, err
    from vila_edge.demo import write_sample_image

    image = write_sample_image(tmp_path / "x.png", size=96)
    code, _, err = cli("caption", tmp_path / "e", "--image", image, "--prompt", "Hi")
    assert code != 0 and "built without a vision tower" in err and "Traceback" not in err


# ---- the demo checkpoint: real SmolLM2 weights ----------------------------------------------------


@pytest.mark.slow
def test_demo_engine_against_the_reference(tmp_path, cli):
    """Real SmolLM2 weights. fp32 activations: the reference's logits and greedy tokens, with torch
    unimportable. int8 activations (the default): a few % of the largest logit, so the argmax may
    differ only where the reference's top two are closer than that error."""
    from vila_edge.demo import build_demo_checkpoint

    demo = build_demo_checkpoint(tmp_path / "vila-demo")
    quant, engine = tmp_path / "awq", tmp_path / "cpu"
    assert cli("quantize", demo, "-o", quant, "--group-size", 64, *QUANT, "--vision", "fp16")[0] == 0
    assert cli("build-engine", quant, "-o", engine, "--target", "cpu", "--vision", "none", "--lm-head", "fp16")[0] == 0
    err, flips = compare_with_reference(quant, engine, prompt="The capital of France is")
    assert not flips and err < 1e-4, err
    err, flips = compare_with_reference(quant, engine, prompt="The capital of France is", activations="int8")
    print(f"demo engine, int8 activations: max relative logit error {err:.4f}; argmax flips at (gap, error) {flips}")
    assert err < 0.1 and all(gap < 2 * diff for gap, diff in flips), flips
    question = ("--prompt", "Describe a cat in one sentence.", "--temperature", 0, "--max-new-tokens", 24, "--format", "jsonl")
    code, out, stderr = cli("caption", quant, *question)
    assert code == 0, stderr
    code, stdout, stderr = caption_without_torch("caption", engine, *question, "--activations", "fp32", "--kv-cache", "fp32")
    assert code == 0, stderr
    assert json.loads(stdout)["token_ids"] == json.loads(out)["token_ids"]
    # the KV cache types on trained weights, against the fp32 cache over 32 greedy steps: measured max relative logit
    # error fp16 3.8e-4, int8 1.4e-2 with fp32 activations, 2.8 % and 3.3 % with int8 ones; the same tokens in all four
    from test_kv_cache import against_the_fp32_cache

    ids = CpuEngine(engine).tokenizer("The capital of France is Paris. The capital of Italy is").input_ids
    for kv, activations, tol in (("fp16", "fp32", 2e-3), ("int8", "fp32", 5e-2), ("fp16", "int8", 0.1), ("int8", "int8", 0.1)):
        err, same_tokens = against_the_fp32_cache(engine, ids, kv, activations)
        assert err < tol and same_tokens, (kv, activations, err)


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
])
def test_rope_frequencies_match_transformers(rope):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from vila_edge.runtime.cpu import rope_frequencies

    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, rope_parameters=dict(rope))
    if rope["rope_type"] == "default":  # transformers computes it inside the rotary module
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        inv, scale = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    else:
        inv, scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](cfg, "cpu")
    mine, my_scale = rope_frequencies({"head_dim": 64, "rope": rope})
    np.testing.assert_array_equal(mine, inv.numpy())
    assert my_scale == scale

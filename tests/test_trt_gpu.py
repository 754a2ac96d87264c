"""On a machine with TensorRT, TensorRT-LLM and a CUDA GPU: build-engine builds the engine itself (exit 0),
the vision plan (built from the fp16 copy of the W8A8 ONNX) agrees with ONNX Runtime on the fp32 W8A8 ONNX, and
the trt backend answers as the reference does.
Skipped elsewhere (conftest says what is missing)."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

TARGET_BY_SM = {87: "orin", 89: "rtx4090", 80: "a100", 90: "h100"}


@pytest.fixture(scope="module")
def gpu_engine(awq, tmp_path_factory):
    from conftest import run_cli

    from vila_edge.runtime.trt import probe_environment

    env, _ = probe_environment()
    if env["sm"] not in TARGET_BY_SM:
        pytest.skip(f"no vila-edge target for sm_{env['sm']} ({env['gpu']})")
    quant = awq("llama", 64)
    out = tmp_path_factory.mktemp("trt") / "engine"
    code, stdout, err = run_cli("build-engine", quant, "-o", out, "--target", TARGET_BY_SM[env["sm"]], "--conv-mode", "vicuna_v1")
    assert code == 0, err
    return quant, out, env


def test_build_engine_records_what_the_engine_is_tied_to(gpu_engine):
    _, out, env = gpu_engine
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "engine" and m["built_with"]["sm"] == env["sm"]
    assert m["built_with"]["tensorrt"] == env["tensorrt"] and m["built_with"]["tensorrt_llm"] == env["tensorrt_llm"]
    assert (out / m["vision"]["plan"]).is_file() and (out / m["vision"]["timing_cache"]).stat().st_size > 0
    assert (out / "llm" / "config.json").is_file()


def test_the_vision_plan_agrees_with_onnx_runtime(gpu_engine):
    from vila_edge.runtime.onnx_vision import OnnxVision
    from vila_edge.runtime.trt import TrtVision

    quant, out, _ = gpu_engine
    m = json.loads((out / "manifest.json").read_text())
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, m["vision"]["image_size"], m["vision"]["image_size"]))
    pixels = pixels.astype(np.float32)
    got = TrtVision(out / m["vision"]["plan"], max_batch=1)(pixels)
    want = OnnxVision(quant / "vision" / "vision_w8a8.onnx")(pixels)
    cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    assert got.shape == want.shape and cos.min() > 0.99, cos.min()


def test_the_trt_backend_answers_as_the_reference_does(gpu_engine, cli, tmp_path):
    """Greedy, text and an image: the first answer token equals the fp16 torch reference's (the rest may part at
    fp16 near-ties on a random tiny model)."""
    from vila_edge.demo import write_sample_image

    quant, out, _ = gpu_engine
    write_sample_image(tmp_path / "scene.png")
    for media in ((), ("--image", tmp_path / "scene.png")):
        args = ("--prompt", "Describe the image.", "--max-new-tokens", 8, "--temperature", 0, "--format", "jsonl", *media)
        code, got, err = cli("caption", out, *args)
        assert code == 0, err
        code, want, err = cli("caption", quant, *args, "--device", "cuda", "--dtype", "float16")
        assert code == 0, err
        got, want = json.loads(got), json.loads(want)
        assert got["backend"].startswith("trt") and got["token_ids"][:1] == want["token_ids"][:1]


def test_bench_times_the_trt_token_stream_against_the_target_bandwidth(gpu_engine, cli, tmp_path):
    from vila_edge.targets import TARGETS

    _, out, env = gpu_engine
    code, stdout, err = cli("bench", out, "--prompt-len", 160, "--gen-len", 8, "--images", 1, "--repeat", 2,
                            "--format", "json", "-o", tmp_path / "trt.json")
    assert code == 0, err
    r = json.loads(stdout)
    assert json.loads((tmp_path / "trt.json").read_text()) == r
    target = TARGETS[TARGET_BY_SM[env["sm"]]]
    assert r["backend"] == "trt" and r["target"] == target.name and r["precision"].startswith("w4a16")
    assert r["bandwidth_source"] == "target" and r["bandwidth_gb_s"] in (target.bandwidth_gb_s, target.super_bandwidth_gb_s)
    assert r["ttft_s"] > 0 and r["prefill_tok_s"] > 0 and r["vision_ms"] > 0 and r["bytes_per_token_mb"] > 0
    assert 0 <= r["decode_tokens"] <= 7 and (r["decode_tokens"] == 0 or r["decode_pct_of_ceiling"] > 0)  # EOS may stop it
    assert r["device"]["gpu"] is None or r["device"]["gpu"]["name"] == env["gpu"]  # Jetson's nvidia-smi may not list it
    code, _, err = cli("bench", out, "--threads", 2)
    assert code == 2 and "--threads and --kernels set the cpu engine" in err

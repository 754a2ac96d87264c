"""The trt backend's calls on a CPU, against stand-ins (tests/standins.py) that take the real APIs' arguments and
apply their input rules: TensorRT-LLM's ModelRunnerCpp (prompt table, tasks, fake ids, limits, end ids), TensorRT's
runtime for the vision plan (shapes, addresses, the stream), and build-engine's steps on the device (trtllm-build
found and called, timing caches reused, the fused-MLP switch). Every bundle is held to TensorRT-LLM's load rules
(tests/trtllm_rules.py) by conftest.run_cli; here the rules are shown to catch what they should."""

import json
import shutil
import sys

import numpy as np
import pytest
import standins
import trtllm_rules
from conftest import run_cli

from vila_edge import IMAGE_TOKEN_INDEX
from vila_edge.errors import UnsupportedError, UsageError
from vila_edge.generate import SamplingParams
from vila_edge.runtime import trt
from vila_edge.runtime.trt import TrtEngine, TrtVision, version_problems

ORIN_ENV = {"tensorrt": "10.3.0", "tensorrt_llm": "0.12.0", "cuda": "12.6", "gpu": "Orin", "sm": 87, "l4t": "36.4.0"}


@pytest.fixture(scope="module")
def orin_bundle(awq, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt-runtime") / "vila-orin"
    code, _, err = run_cli("build-engine", awq("llama", 64), "-o", out, "--target", "orin", "--conv-mode", "vicuna_v1")
    assert code == 3, err
    return out


@pytest.fixture
def stand_ins(monkeypatch):
    """TensorRT-LLM and TensorRT stand-ins in sys.modules, tensors on the CPU, torch.cuda's streams recorded."""
    return standins.install_trt_llm(monkeypatch)


def engine_from_bundle(bundle, folder, monkeypatch, streams) -> dict:
    """`folder`: the bundle as build-engine on an Orin would leave it, with stand-in engine files."""
    shutil.copytree(bundle, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m |= {"kind": "engine", "built_with": ORIN_ENV, "llm": {**m["llm"], "engine_dir": "llm"},
          "vision": {**m["vision"], "plan": "vision/vision.plan"}}
    (folder / "manifest.json").write_text(json.dumps(m))
    standins.write_engine_config(folder / "llm", m["limits"], m["llm"]["vocab"], m["llm"]["hidden"])
    (folder / "vision/vision.plan").write_bytes(b"stand-in plan")
    tokens = m["limits"]["max_multimodal_len"] // m["limits"]["images"]
    monkeypatch.setitem(sys.modules, "tensorrt", standins.tensorrt_module(streams, tokens, m["llm"]["hidden"], 1))
    monkeypatch.setattr(trt, "probe_environment", lambda: (ORIN_ENV, []))
    return m


def test_a_caption_on_the_trt_backend_passes_modelrunnercpp_what_it_takes(orin_bundle, stand_ins, monkeypatch, tmp_path, cli):
    from vila_edge.demo import write_sample_image

    m = engine_from_bundle(orin_bundle, tmp_path / "engine", monkeypatch, stand_ins)
    write_sample_image(tmp_path / "scene.png")
    code, out, err = cli("caption", tmp_path / "engine", "--image", tmp_path / "scene.png", "--prompt", "Describe the image.",
                         "--max-new-tokens", 6, "--temperature", 0, "--format", "jsonl")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["backend"] == "trt (orin)" and answer["token_ids"] == standins.ModelRunnerCpp.script[:6]
    (runner,) = standins.ModelRunnerCpp.instances
    limits, vocab = m["limits"], m["llm"]["vocab"]
    assert runner.from_dir_kwargs["max_tokens_in_paged_kv_cache"] == limits["max_batch"] * limits["max_seq_len"]
    (call,) = runner.calls
    rows = limits["max_multimodal_len"]
    assert call["table"].shape == (1, rows, m["llm"]["hidden"]) and call["prompt_tasks"] == "0"
    fake = [i for i in call["ids"] if i >= vocab]
    assert fake == list(range(vocab, vocab + rows))  # the image block, in table order
    assert call["max_new_tokens"] == 6 and call["end_id"] == 2 and call["pad_id"] is not None
    assert (call["temperature"], call["top_k"], call["top_p"]) == (1.0, 1, 0.0)  # greedy as TensorRT-LLM spells it
    # the plan ran once, on the runner's stream, and was synchronized before its output was read
    (run,) = sys.modules["tensorrt"].runs
    assert run["batch"] == 1 and ("synchronize", run["stream"]) in stand_ins.log

    code, out, err = cli("caption", tmp_path / "engine", "--prompt", "hi", "--max-new-tokens", 3, "--format", "jsonl")
    assert code == 0, err
    text_only = standins.ModelRunnerCpp.instances[-1].calls[-1]
    assert text_only["table"] is None and text_only["prompt_tasks"] is None and max(text_only["ids"]) < vocab


def test_max_new_tokens_stays_within_the_engines_max_seq_len(orin_bundle, stand_ins, monkeypatch, tmp_path):
    m = engine_from_bundle(orin_bundle, tmp_path / "engine", monkeypatch, stand_ins)
    engine = TrtEngine(tmp_path / "engine")
    seq = m["limits"]["max_seq_len"]
    assert engine.info.model_max_length == min(m["text"]["model_max_length"], seq)
    prompt = engine.splice([1] + [3] * (seq - 4), None)
    assert list(engine.generate_tokens(prompt, SamplingParams(max_new_tokens=50, temperature=0))) == standins.ModelRunnerCpp.script[:3]
    assert engine.runner.calls[-1]["max_new_tokens"] == 3
    with pytest.raises(UsageError, match=f"holds {seq} with the answer"):
        list(engine.generate_tokens(trt.TablePrompt(np.ones(seq, np.int32), None), SamplingParams()))


def test_the_vision_runner_batches_on_its_own_stream(stand_ins, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", standins.tensorrt_module(stand_ins, tokens=3, hidden=4, max_batch=2))
    (tmp_path / "vision.plan").write_bytes(b"stand-in plan")
    pixels = np.random.default_rng(0).uniform(-1, 1, (5, 3, 8, 8)).astype(np.float32)
    got = TrtVision(tmp_path / "vision.plan", max_batch=2)(pixels)
    assert got.shape == (5, 3, 4)
    np.testing.assert_allclose(got[:, 0, 0], pixels.reshape(5, -1).mean(1), rtol=1e-5)
    runs = sys.modules["tensorrt"].runs
    assert [r["batch"] for r in runs] == [2, 2, 1]
    assert stand_ins.log == [("synchronize", r["stream"]) for r in runs]
    (tmp_path / "bad.plan").write_bytes(b"not a plan")
    with pytest.raises(Exception, match="cannot deserialize"):
        TrtVision(tmp_path / "bad.plan", max_batch=2)


def test_a_tensorrt_llm_without_modelrunnercpp_is_refused_clearly(orin_bundle, stand_ins, monkeypatch, tmp_path):
    engine_from_bundle(orin_bundle, tmp_path / "engine", monkeypatch, stand_ins)
    del sys.modules["tensorrt_llm"].runtime.ModelRunnerCpp
    with pytest.raises(UnsupportedError, match="no ModelRunnerCpp.*tensorrt_llm>=1.0,<1.3"):
        TrtEngine(tmp_path / "engine")


@pytest.mark.parametrize("jetson,versions,bad", [
    (True, {"tensorrt": "10.3.0.30", "tensorrt_llm": "0.12.0"}, []),
    (True, {"tensorrt": "10.3.0", "tensorrt_llm": "0.13.0"}, ["TensorRT-LLM 0.13.0"]),
    (False, {"tensorrt": "10.13.0", "tensorrt_llm": "1.2.0rc1"}, []),
    (False, {"tensorrt": "11.4.0.106", "tensorrt_llm": "1.3.0"}, ["TensorRT-LLM 1.3.0"]),
    (False, {"tensorrt": "8.6.1", "tensorrt_llm": "0.11.0"}, ["TensorRT 8.6.1", "TensorRT-LLM 0.11.0"]),
])
def test_only_the_library_versions_the_code_was_checked_against_are_accepted(jetson, versions, bad):
    problems = version_problems(versions, jetson)
    assert [p.split(" is not")[0] for p in problems] == bad
    for p in problems:
        assert "checked against" in p and ("0.12.x" if jetson else "0.12 to 1.2.x") in p


def test_a_cpu_only_torch_is_named_as_the_reason_no_gpu_is_seen(monkeypatch):
    """A stand-in torch module (what a plain `pip install torch` leaves on a Jetson: no CUDA) checks the message."""
    import types

    cpu_torch = types.ModuleType("torch")
    cpu_torch.__version__, cpu_torch.version = "2.5.0+cpu", types.SimpleNamespace(cuda=None)
    monkeypatch.setitem(sys.modules, "torch", cpu_torch)
    (desktop,), (jetson,) = trt._probe_gpu({}, jetson=False), trt._probe_gpu({}, jetson=True)
    assert "torch 2.5.0+cpu is a CPU-only build" in desktop and "a CUDA build of torch" in desktop
    assert "NVIDIA's torch wheel for this JetPack" in jetson


def test_the_load_rules_catch_what_trtllm_build_would_refuse(orin_bundle, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(orin_bundle / "trtllm_checkpoint", ckpt)
    assert trtllm_rules.problems(ckpt) == []
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "head_size": 16}))
    assert trtllm_rules.problems(ckpt) == ["head_size 16 has no generation attention kernel"]
    (ckpt / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] * 2}))
    found = trtllm_rules.problems(ckpt)
    assert found and all("mlp" in p for p in found)


def test_a_qwen2_bundle_meets_the_load_rules(awq, tmp_path):
    code, _, err = run_cli("build-engine", awq("qwen2", 64), "-o", tmp_path / "qwen", "--target", "rtx4090")
    assert code == 3, err
    config = json.loads((tmp_path / "qwen/trtllm_checkpoint/config.json").read_text())
    assert config["architecture"] == "Qwen2ForCausalLM" and config["attn_bias"] and config["head_size"] == 32
    assert trtllm_rules.problems(tmp_path / "qwen/trtllm_checkpoint") == []


def test_image_markers_in_a_prompt_are_fake_ids_the_table_covers(orin_bundle, stand_ins, monkeypatch, tmp_path):
    m = engine_from_bundle(orin_bundle, tmp_path / "engine", monkeypatch, stand_ins)
    engine = TrtEngine(tmp_path / "engine")
    rows = m["limits"]["max_multimodal_len"]
    embeds = np.random.default_rng(1).standard_normal((1, rows, m["llm"]["hidden"])).astype(np.float32)
    prompt = engine.splice([1, IMAGE_TOKEN_INDEX, 4], embeds)
    assert prompt.table.shape == (1, rows, m["llm"]["hidden"])
    list(engine.generate_tokens(prompt, SamplingParams(max_new_tokens=2, temperature=0.7, seed=3)))
    call = engine.runner.calls[-1]
    np.testing.assert_allclose(call["table"][0], embeds[0].astype(np.float16), rtol=0, atol=0)
    assert call["random_seed"] == 3 and call["temperature"] == 0.7 and call["top_k"] == 0


# ---- build-engine's steps on the device ------------------------------------------------------------------

STANDIN_TRTLLM_BUILD = """#!/bin/sh
# stand-in trtllm-build: prints the --help of the release under test, else records its arguments and writes
# what the real one leaves in --output_dir (the engine files and the output timing cache)
if [ "$1" = --help ]; then cat "$HELP_TEXT"; exit 0; fi
echo "$@" >> "$RECORD"
while [ $# -gt 0 ]; do
  case "$1" in
    --output_dir) out=$2 ;;
    --output_timing_cache) cache=$2 ;;
  esac
  shift
done
mkdir -p "$out" && echo '{}' > "$out/config.json" && echo engine > "$out/rank0.engine" && echo tactics > "$cache"
"""
HELP_0_12 = "  --use_fused_mlp       Enable horizontal fusion in GatedMLP\n  --max_seq_len MAX_SEQ_LEN\n"
HELP_1_X = "  --use_fused_mlp {enable,disable}\n                        Enable horizontal fusion in Gated-MLP\n"


@pytest.mark.parametrize("help_text,fused", [(HELP_0_12, ()), (HELP_1_X, ("--use_fused_mlp", "disable")), ("", ())])
def test_the_gated_mlp_stays_unfused_in_the_form_trtllm_build_takes(help_text, fused):
    from vila_edge.export.trt_engine import fused_mlp_off

    assert fused_mlp_off(help_text) == fused


def test_build_engine_on_the_device_reuses_both_timing_caches(orin_bundle, monkeypatch, tmp_path, cli):
    """The device build with a stand-in trtllm-build (above) and the vision builder replaced by a recorder: the
    subject is build_from_bundle's order of work and where each timing cache goes, not TensorRT."""
    from vila_edge.export import trt_engine, trt_vision

    bin_dir, record = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "trtllm-build").write_text(STANDIN_TRTLLM_BUILD)
    (bin_dir / "trtllm-build").chmod(0o755)
    (tmp_path / "help.txt").write_text(HELP_1_X)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("RECORD", str(record))
    monkeypatch.setenv("HELP_TEXT", str(tmp_path / "help.txt"))
    monkeypatch.setenv("VILA_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(trt_engine, "probe_environment", lambda: (ORIN_ENV, []))
    seen = []

    def build_vision_plan(onnx, plan, cache, precision, input_name, item_shape, max_batch, workspace_bytes):
        seen.append(cache.read_bytes() if cache.is_file() else None)
        plan.write_bytes(b"plan")
        cache.write_bytes(b"vision tactics %d" % len(seen))
        return {"precision": precision, "max_batch": max_batch}

    monkeypatch.setattr(trt_vision, "build_vision_plan", build_vision_plan)
    device_cache = tmp_path / "cache" / "trt-sm87-trt10.3.0-trtllm0.12.0"
    for n in (1, 2):
        code, out, err = cli("build-engine", orin_bundle, "-o", tmp_path / f"engine{n}", "--target", "orin")
        assert code == 0, err
    first, second = (line.split() for line in record.read_text().splitlines())
    assert "--input_timing_cache" not in first and first[-2:] == ["--use_fused_mlp", "disable"]
    assert second[second.index("--input_timing_cache") + 1] == str(device_cache / "model.cache")
    assert seen == [None, b"vision tactics 1"]  # the second vision build starts from the first one's tactics
    assert (device_cache / "vision.cache").read_bytes() == b"vision tactics 2"
    m = json.loads((tmp_path / "engine2/manifest.json").read_text())
    assert m["llm"]["timing_cache_reused"] and m["vision"]["build"]["timing_cache_reused"]
    assert (tmp_path / "engine2/llm/rank0.engine").is_file() and (tmp_path / "engine2/vision/vision.plan").is_file()
    bundle = json.loads((orin_bundle / "manifest.json").read_text())
    assert m["vision_layout"] == bundle["vision_layout"]  # the engine tiles images as the checkpoint does


def test_trtllm_build_is_found_beside_the_interpreter_and_in_local_bin(monkeypatch, tmp_path):
    from vila_edge.export import trt_engine

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv/bin/python"))
    assert trt_engine.find_trtllm_build() is None
    for folder in (tmp_path / ".local/bin", tmp_path / "venv/bin"):
        folder.mkdir(parents=True)
        (folder / "trtllm-build").write_text("#!/bin/sh\n")
        (folder / "trtllm-build").chmod(0o755)
        assert trt_engine.find_trtllm_build() == str(folder / "trtllm-build")


def test_without_trtllm_build_the_checkpoint_becomes_a_bundle_that_says_where_it_looked(awq, monkeypatch, tmp_path, cli):
    from vila_edge.export import trt_engine

    monkeypatch.setattr(trt_engine, "probe_environment", lambda: (ORIN_ENV, []))
    monkeypatch.setattr(trt_engine, "find_trtllm_build", lambda: None)
    code, _, err = cli("build-engine", awq("llama", 64), "-o", tmp_path / "b", "--target", "orin-nano")
    assert code == 3 and "trtllm-build is not on PATH, beside" in err and "~/.local/bin" in err
    assert "not officially supported by TensorRT-LLM v0.12.0-jetson" in err
    assert "not officially supported" in (tmp_path / "b/build.sh").read_text()


def test_bench_drives_the_trt_backend_within_its_limits(orin_bundle, stand_ins, monkeypatch, tmp_path, cli):
    m = engine_from_bundle(orin_bundle, tmp_path / "engine", monkeypatch, stand_ins)
    (tmp_path / "engine/llm/rank0.engine").write_bytes(bytes(1000))
    code, out, err = cli("bench", tmp_path / "engine", "--prompt-len", 160, "--gen-len", 4, "--images", 1, "--repeat", 1,
                         "--format", "json")
    assert code == 0, err
    r = json.loads(out)
    assert r["backend"] == "trt" and r["target"] == "orin" and r["decode_tokens"] == 3
    calls = [c for runner in standins.ModelRunnerCpp.instances for c in runner.calls]
    assert calls and all(c["table"].shape == (1, m["limits"]["max_multimodal_len"], m["llm"]["hidden"]) for c in calls)

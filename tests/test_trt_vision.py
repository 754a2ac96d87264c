"""export/trt_vision.py against a stand-in `tensorrt` module that records every call build_vision_plan makes.

This checks the calls we make (network flags, parser, builder config, profile, timing cache, build), not TensorRT's
behaviour: nothing here parses an ONNX or builds a plan. The stand-in's enums are TensorRT's own, from its
sources: 10.3 (BuilderFlag has FP16 and INT8; STRONGLY_TYPED = 1 after the ignored EXPLICIT_BATCH), 11.1 (no
FP16 or INT8; STRONGLY_TYPED = 0, deprecated and ignored, always on), and a later release without STRONGLY_TYPED.
"""

import sys
import types

import pytest

from vila_edge.errors import CheckpointError
from vila_edge.export.trt_vision import build_vision_plan

ENUMS = {  # release -> (NetworkDefinitionCreationFlag, BuilderFlag names); python/src/infer/pyCore.cpp, NvInfer.h
    "10.3": ({"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
             ("FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "TF32", "VERSION_COMPATIBLE", "FP8", "INT4")),
    "11.1": ({"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2},
             ("DEBUG", "GPU_FALLBACK", "REFIT", "TF32", "VERSION_COMPATIBLE", "STRICT_NANS")),
    "later": ({"PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}, ("DEBUG", "REFIT")),
}
FLAGS = {"10.3": 1 << 1, "11.1": 1 << 0, "later": 0}  # what create_network must be given


class RecordingEnum:
    """An enum whose every attribute read is recorded (a missing member raises AttributeError, as pybind11's does)."""

    def __init__(self, name: str, members: dict, calls: list):
        self._name, self._members, self._calls = name, members, calls

    def __getattr__(self, attr):
        self._calls.append(("enum", f"{self._name}.{attr}"))
        if attr not in self._members:
            raise AttributeError(f"type object '{self._name}' has no attribute '{attr}'")
        return self._members[attr]


def stand_in(release: str, parse_ok: bool = True, builds: bool = True) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.calls = calls = []
    network_flags, builder_flags = ENUMS[release]
    trt.NetworkDefinitionCreationFlag = RecordingEnum("NetworkDefinitionCreationFlag", network_flags, calls)
    trt.BuilderFlag = RecordingEnum("BuilderFlag", {n: i for i, n in enumerate(builder_flags)}, calls)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    record = lambda *call: calls.append(call)  # noqa: E731

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level):
            record("Logger", level)

    class TimingCache:
        tag = "the timing cache"

        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+timed"

    class Config:
        def __getattr__(self, name):  # set_memory_pool_limit, set_flag, set_timing_cache, add_optimization_profile ...
            return lambda *args: record(name, *(getattr(a, "tag", a) for a in args))

        def create_timing_cache(self, data):
            record("create_timing_cache", bytes(data))
            self.cache = TimingCache(data)
            return self.cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        tag = "the profile"

        def set_shape(self, *args):
            record("set_shape", *args)

    class Builder:
        def __init__(self, logger):
            record("Builder", type(logger).__name__)

        def create_network(self, flags):
            record("create_network", flags)
            return "network"

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            record("build_serialized_network", network, type(config).__name__)
            return memoryview(b"PLAN") if builds else None

    class OnnxParser:
        num_errors = 0 if parse_ok else 2

        def __init__(self, network, logger):
            record("OnnxParser", network)

        def parse_from_file(self, path):
            record("parse_from_file", path)
            return parse_ok

        def get_error(self, i):
            return f"In node {i}: unsupported"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


def build(tmp_path, monkeypatch, release, precision="int8", max_batch=4, **kwargs):
    trt = stand_in(release, **kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    onnx = tmp_path / "vision_w8a8_fp16.onnx"
    built = build_vision_plan(onnx, tmp_path / "vision.plan", tmp_path / "timing.cache", precision, "pixel_values", (3, 70, 70),
                              max_batch, 1 << 30)
    return trt.calls, built


@pytest.mark.parametrize("release", list(ENUMS))
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_always_strongly_typed_and_no_precision_flag(release, precision, tmp_path, monkeypatch):
    calls, built = build(tmp_path, monkeypatch, release, precision)
    assert ("create_network", FLAGS[release]) in calls
    assert not [c for c in calls if c[0] == "set_flag"]
    assert [c for c in calls if c[0] == "enum"] == [("enum", "NetworkDefinitionCreationFlag.STRONGLY_TYPED")]  # no BuilderFlag
    assert built == {"precision": precision, "strongly_typed": True, "max_batch": 4, "workspace_bytes": 1 << 30,
                     "plan_bytes": 4}


def test_the_calls_in_order(tmp_path, monkeypatch):
    calls, _ = build(tmp_path, monkeypatch, "10.3", max_batch=4)
    shape = lambda b: (b, 3, 70, 70)  # noqa: E731
    assert [c for c in calls if c[0] != "enum"] == [
        ("Logger", "WARNING"), ("Builder", "Logger"), ("create_network", 2), ("OnnxParser", "network"),
        ("parse_from_file", str(tmp_path / "vision_w8a8_fp16.onnx")),
        ("set_memory_pool_limit", "WORKSPACE", 1 << 30),
        ("set_shape", "pixel_values", shape(1), shape(2), shape(4)), ("add_optimization_profile", "the profile"),
        ("create_timing_cache", b""), ("set_timing_cache", "the timing cache", False),
        ("build_serialized_network", "network", "Config"),
    ]
    assert (tmp_path / "vision.plan").read_bytes() == b"PLAN"
    assert (tmp_path / "timing.cache").read_bytes() == b"+timed"


def test_the_timing_cache_is_read_when_it_exists_and_written_after_the_build(tmp_path, monkeypatch):
    (tmp_path / "timing.cache").write_bytes(b"earlier")
    calls, _ = build(tmp_path, monkeypatch, "11.1", max_batch=1)
    assert ("create_timing_cache", b"earlier") in calls
    assert ("set_shape", "pixel_values", (1, 3, 70, 70), (1, 3, 70, 70), (1, 3, 70, 70)) in calls
    assert (tmp_path / "timing.cache").read_bytes() == b"earlier+timed"


def test_a_refused_onnx_or_a_failed_build_says_so_and_writes_nothing(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="parser refuses it: In node 0: unsupported; In node 1: unsupported"):
        build(tmp_path, monkeypatch, "10.3", parse_ok=False)
    with pytest.raises(CheckpointError, match="could not build a plan"):
        build(tmp_path, monkeypatch, "11.1", builds=False)
    assert not (tmp_path / "vision.plan").exists() and not (tmp_path / "timing.cache").exists()
    with pytest.raises(ValueError, match="precision 'fp32'"):
        build(tmp_path, monkeypatch, "11.1", precision="fp32")

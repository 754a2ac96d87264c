"""bench's pieces that need no engine: which bandwidth the decode ceiling uses, the bytes a TensorRT-LLM
engine reads per token, nvidia-smi's CSV, and the device description off a Jetson."""

import pytest

from vila_edge.bandwidth import choose_bandwidth, decode_ceiling, kv_bytes, trt_bytes_per_token
from vila_edge.device import JetsonMonitor, cpu_info, describe_device, parse_gpu_csv
from vila_edge.targets import TARGETS

SPEC = {"hidden": 64, "layers": 2, "kv_heads": 2, "head_dim": 16, "vocab": 100}


@pytest.mark.parametrize("target,nvpmodel,gb_s", [
    ("orin-nano", "15W", 68.0),
    ("orin-nano", "MAXN_SUPER", 102.0),
    ("orin-nano", "25W", 102.0),
    ("orin-nano", None, 68.0),  # no jtop: the base figure, with the Super one in the note
    ("orin", "MAXN", 204.8),
    ("h100", None, 3350.0),
])
def test_gpu_targets_use_their_peak_bandwidth_and_orin_nano_its_super_mode(target, nvpmodel, gb_s):
    b = choose_bandwidth(TARGETS[target], None, 2, nvpmodel)
    assert b["bandwidth_gb_s"] == gb_s and b["bandwidth_source"] == "target"
    if target == "orin-nano":
        assert "Super mode" in b["bandwidth_note"]


def test_cpu_bandwidth_is_measured_unless_given():
    measured = choose_bandwidth(TARGETS["cpu"], None, 1)
    assert measured["bandwidth_source"] == "measured" and measured["bandwidth_gb_s"] > 0
    assert "1 threads" in measured["bandwidth_note"]
    given = choose_bandwidth(TARGETS["orin"], 180.0, 1, "MAXN")
    assert given == {"bandwidth_gb_s": 180.0, "bandwidth_source": "given", "bandwidth_note": "--bandwidth-gb-s"}


def test_the_ceiling_takes_the_higher_probe_and_never_reports_over_100_percent():
    b = choose_bandwidth(TARGETS["cpu"], None, 2, probes=[9.5, 14.2])  # one probe ran while the machine was busy
    assert b["bandwidth_gb_s"] == 14.2 and b["bandwidth_probes_gb_s"] == [9.5, 14.2] and "before and after" in b["bandwidth_note"]
    fine = decode_ceiling(40.0, 14.2, 284_000_000)  # ceiling 50 tok/s
    assert fine["decode_pct_of_ceiling"] == 80.0 and fine["ceiling_note"] is None
    over = decode_ceiling(52.0, 14.2, 284_000_000)
    assert over["decode_pct_of_ceiling"] is None and "probe was disturbed" in over["ceiling_note"]
    assert "104 %" in over["ceiling_note"] and over["decode_ceiling_tok_s"] == 50.0
    given = decode_ceiling(52.0, 14.2, 284_000_000, source="given")
    assert given["decode_pct_of_ceiling"] is None and "given bandwidth is below" in given["ceiling_note"]


def test_a_trt_engine_reads_its_engine_files_less_the_embedding_table_plus_an_fp16_cache(tmp_path):
    (tmp_path / "rank0.engine").write_bytes(bytes(50_000))
    (tmp_path / "config.json").write_text("{}")  # not weights
    expected = 50_000 - 2 * 100 * 64 + 2 * 64 + 2 * 2 * 2 * 16 * 2 * 10
    assert kv_bytes(SPEC, 10, 2) == 2 * 2 * 2 * 16 * 2 * 10
    assert trt_bytes_per_token(tmp_path, SPEC, 10) == expected


def test_nvidia_smi_csv_is_parsed_with_unsupported_values_as_none():
    text = "NVIDIA H100 80GB HBM3, 81559, 1234, 550.54.15\nOrin (nvgpu), [N/A], [N/A], 540.4.0\n"
    assert parse_gpu_csv(text) == [
        {"name": "NVIDIA H100 80GB HBM3", "memory_total_mb": 81559.0, "memory_used_mb": 1234.0, "driver": "550.54.15"},
        {"name": "Orin (nvgpu)", "memory_total_mb": None, "memory_used_mb": None, "driver": "540.4.0"},
    ]
    assert parse_gpu_csv("") == []


def test_off_a_jetson_the_device_says_why_there_is_no_jetson_section():
    with JetsonMonitor() as monitor:  # this test machine is no Jetson
        monitor.start()
        monitor.stop()
        device = describe_device(monitor, decode_s=1.0, decode_tokens=10)
    assert monitor.samples == [] and monitor.nvpmodel is None
    assert device["jetson"] is None and "not a Jetson" in device["jetson_note"]
    assert device["cpu"] == cpu_info() and device["cpu"]["logical_cpus"] >= 1

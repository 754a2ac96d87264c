"""bench-table: bench result JSONs -> the markdown tables and the bar chart; bad inputs are one-line errors."""

import json

import pytest

from vila_edge.bench_table import decode_figure, load_results
from vila_edge.cli import main

CPU = {"cpu": {"model": "AMD EPYC 7B13", "logical_cpus": 2, "arch": "x86_64"}, "gpu": None, "jetson": None,
       "jetson_note": "not a Jetson (/etc/nv_tegra_release is absent)"}
ORIN_NANO = {
    "cpu": {"model": "ARMv8 Processor rev 1 (v8l)", "logical_cpus": 6, "arch": "aarch64"},
    "gpu": None,
    "jetson": {"board": "NVIDIA Jetson Orin Nano Developer Kit", "l4t": "36.4.3", "jetpack": "6.2", "nvpmodel": "MAXN_SUPER",
               "jetson_clocks": True, "power_samples": 14, "power_mw": {"VDD_IN": 14230, "VDD_CPU_GPU_CV": 6120, "VDD_SOC": 3050},
               "power_total_mw": 14230, "energy_per_token_mj": 332.5},
    "jetson_note": None,
}


def result(model, target, decode, ttft_s, pct, time, **extra):
    cpu = target == "cpu"
    r = {
        "format": "vila-edge-bench", "format_version": 1, "model": model, "engine": f"engines/{model}-{target}",
        "target": target, "backend": "cpu" if cpu else "trt", "weights": "AWQ int4 g128",
        "precision": "w4a8 g128, lm_head int8, vision w8a8" if cpu else "w4a16 g128, lm_head fp16, vision w8a8",
        "prompt_tokens": 324, "text_tokens": 128, "images": 1, "gen_len": 64, "decode_tokens": 63, "repeat": 3,
        "warmup": 1, "threads": 2 if cpu else None, "kernels": "avx2" if cpu else None, "ttft_s": ttft_s,
        "ttft_median_s": ttft_s, "ttft_p90_s": ttft_s * 1.05, "vision_ms": 410.0 if cpu else 31.0,
        "prefill_tok_s": 61.0 if cpu else 1450.0, "decode_tok_s": decode,
        "bandwidth_gb_s": 29.8 if cpu else 102.0, "bandwidth_source": "measured" if cpu else "target",
        "bandwidth_note": "", "bytes_per_token_mb": 1650.0, "decode_ceiling_tok_s": 18.1 if cpu else 61.8,
        "decode_pct_of_ceiling": pct, "peak_rss_mb": 2100.0, "gpu_memory_mb": None, "weights_mb": 1620.0,
        "cpu": "AMD EPYC 7B13 (2 logical CPUs, x86_64)", "device": CPU if cpu else ORIN_NANO, "runs": [],
        "vila_edge": "0.1.0", "python": "3.11.7", "time": time,
    }
    return r | extra


SAMPLES = [
    result("VILA1.5-3B", "cpu", 8.74, 5.912, 48.3, "2026-11-20T10:00:00+0000"),
    result("VILA1.5-3B", "orin-nano", 42.81, 0.6404, 69.3, "2026-11-20T11:30:00-0700"),
    # the same cell twice: the later run (listed first) is the one shown
    result("NVILA-Lite-2B", "cpu", 12.93, 3.0204, 51.0, "2026-11-21T09:00:00+0000"),
    result("NVILA-Lite-2B", "cpu", 12.41, 3.1051, 49.0, "2026-11-19T09:00:00+0000"),
]

COLUMNS = "| model | weights | cpu: AMD EPYC 7B13 (2 threads) | orin-nano: Jetson Orin Nano 8 GB (MAXN_SUPER) |\n|---|---|---:|---:|\n"
EXPECTED = [
    "### Decode (tokens/s, batch 1)\n\n" + COLUMNS
    + "| VILA1.5-3B | AWQ int4 g128 | 8.7 | 42.8 |\n| NVILA-Lite-2B | AWQ int4 g128 | 12.9 | – |\n",
    "### Decode, % of the memory-bandwidth ceiling\n\n" + COLUMNS
    + "| VILA1.5-3B | AWQ int4 g128 | 48% | 69% |\n| NVILA-Lite-2B | AWQ int4 g128 | 51% | – |\n",
    "### Time to first token (ms, mean)\n\n" + COLUMNS
    + "| VILA1.5-3B | AWQ int4 g128 | 5912 | 640 |\n| NVILA-Lite-2B | AWQ int4 g128 | 3020 | – |\n",
    "### Devices\n\n| device | bandwidth | engine |\n|---|---|---|\n"
    "| cpu: AMD EPYC 7B13 (2 threads) | 29.8 GB/s (measured) | w4a8 g128, lm_head int8, vision w8a8 |\n"
    "| orin-nano: Jetson Orin Nano 8 GB (MAXN_SUPER) | 102 GB/s (target) | w4a16 g128, lm_head fp16, vision w8a8 |\n",
    "Settings: prompt 128 text tokens + 1 image, 64 generated tokens, 3 repeats after 1 warm-up.\n",
]


def write_samples(folder, samples=SAMPLES):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, r in enumerate(samples):
        paths.append(folder / f"{i:02d}-{r['model']}-{r['target']}.json")
        paths[-1].write_text(json.dumps(r, indent=2))
    return paths


def test_the_tables_have_models_as_rows_devices_as_columns_and_the_latest_result_per_cell(tmp_path, capsys):
    paths = write_samples(tmp_path / "results")
    out = tmp_path / "table.md"
    assert main(["bench-table", *map(str, paths), "-o", str(out)]) == 0
    text = out.read_text()
    for block in EXPECTED:
        assert block in text, block
    assert capsys.readouterr().out == ""  # -o: the table goes to the file only
    assert not list(tmp_path.glob(".table.md.tmp-*"))


def test_a_folder_reads_its_bench_results_and_skips_other_json(tmp_path, capsys):
    folder = tmp_path / "results"
    write_samples(folder)
    (folder / "cpu_engine.json").write_text(json.dumps({"what": "another benchmark's results", "runs": []}))
    (folder / "notes.json").write_text("not json at all")
    assert len(load_results([folder])) == len(SAMPLES)
    assert main(["bench-table", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert all(block in printed for block in EXPECTED)


def test_settings_that_differ_are_listed_per_cell(tmp_path, capsys):
    samples = [SAMPLES[0], result("VILA1.5-3B", "orin-nano", 40.0, 0.7, 65.0, "2026-11-20T12:00:00+0000", images=0)]
    assert main(["bench-table", *map(str, write_samples(tmp_path, samples))]) == 0
    printed = capsys.readouterr().out
    assert "Settings differ between cells:\n" in printed
    assert "- VILA1.5-3B (AWQ int4 g128) on orin-nano: Jetson Orin Nano 8 GB (MAXN_SUPER): prompt 128 text tokens, 64" in printed


def test_the_plot_is_a_png_with_one_bar_per_filled_cell(tmp_path, capsys):
    paths = write_samples(tmp_path / "results")
    png = tmp_path / "plots" / "decode.png"
    assert main(["bench-table", *map(str, paths), "--plot", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert "(3 bars)" in capsys.readouterr().err
    ax = decode_figure(load_results(paths)).axes[0]
    heights = sorted(round(p.get_height(), 2) for p in ax.patches)
    assert heights == [8.74, 12.93, 42.81]  # 2 models x 2 devices, less the empty cell; the later NVILA run
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "cpu: AMD EPYC 7B13 (2 threads)", "orin-nano: Jetson Orin Nano 8 GB (MAXN_SUPER)"]


def broken(tmp_path):
    no_decode = dict(SAMPLES[0])
    del no_decode["decode_tok_s"]
    files = {"other.json": json.dumps({"runs": []}), "garbage.json": "{not json", "no-decode.json": json.dumps(no_decode),
             "future.json": json.dumps(SAMPLES[0] | {"format_version": 99})}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "empty").mkdir()
    return tmp_path


@pytest.mark.parametrize("name,message", [
    ("absent.json", "absent.json: no such file or folder"),
    ("other.json", "other.json: not a vila-edge bench result"),
    ("garbage.json", "garbage.json: not a vila-edge bench result"),
    ("no-decode.json", "no-decode.json: bench result without decode_tok_s"),
    ("future.json", "future.json: bench result format 99"),
    ("empty", "empty: no bench results in this folder"),
])
def test_bad_inputs_are_one_line_errors_and_write_nothing(name, message, tmp_path, capsys):
    folder = broken(tmp_path)
    good = write_samples(tmp_path / "good")[0]
    code = main(["bench-table", str(good), str(folder / name), "-o", str(tmp_path / "t.md"), "--plot", str(tmp_path / "t.png")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert message in captured.err and "Traceback" not in captured.err and captured.err.count("\n") == 1
    assert not (tmp_path / "t.md").exists() and not (tmp_path / "t.png").exists()


def test_a_desktop_gpu_column_is_named_by_its_gpu_and_an_unlabelled_jetson_by_its_target(tmp_path, capsys):
    h100 = {**CPU, "gpu": {"name": "NVIDIA H100 80GB HBM3", "memory_total_mb": 81559.0, "memory_used_mb": 4100.0,
                           "driver": "550.54.15"}}
    no_jtop = {**ORIN_NANO, "jetson": None, "jetson_note": "jetson-stats is not installed"}
    samples = [result("VILA1.5-3B", "h100", 190.2, 0.021, 12.0, "2026-11-20T10:00:00+0000", device=h100, threads=None),
               result("VILA1.5-3B", "orin", 44.0, 0.12, 35.5, "2026-11-20T10:00:00+0000", device=no_jtop)]
    assert main(["bench-table", *map(str, write_samples(tmp_path, samples))]) == 0
    printed = capsys.readouterr().out
    assert "| model | weights | h100: NVIDIA H100 80GB HBM3 | orin: Jetson AGX Orin 64 GB |\n" in printed
    assert "| VILA1.5-3B | AWQ int4 g128 | 190.2 | 44.0 |\n" in printed

"""The W8A8 schemes beyond one static range per tensor: ranges searched on the readers' output error
(quant/range_search.py) and the layers kept float until the held-out cosine holds (export/vision_mixed.py)."""

import json

import numpy as np
import onnx
import pytest

from vila_edge.quant.range_search import fake_quant, outlier_ratio, output_error, reader_gram, search_threshold


def outlier_rows(seed=0, rows=512, k=64, big=40.0):
    """Activations with one channel 40x the others (a trained ViT's fc1 / fc2 inputs look like this)."""
    x = np.random.default_rng(seed).normal(size=(rows, k)).astype(np.float32)
    x[:, 3] *= big
    return x


def test_the_output_error_is_the_readers_error():
    rng = np.random.default_rng(1)
    x, w = outlier_rows(), rng.normal(size=(64, 48)).astype(np.float32)
    t = float(np.abs(x).max()) * 0.5
    direct = float((((fake_quant(x, t) - x) @ w) ** 2).sum(axis=1).mean())
    assert output_error(x, reader_gram([w]), t) == pytest.approx(direct, rel=1e-4)
    # q, k and v read one tensor: their weights side by side
    w2 = rng.normal(size=(64, 16)).astype(np.float32)
    both = float((((fake_quant(x, t) - x) @ np.concatenate([w, w2], 1)) ** 2).sum(axis=1).mean())
    assert output_error(x, reader_gram([w, w2]), t) == pytest.approx(both, rel=1e-4)


def test_the_search_beats_max_and_percentile_where_a_channel_is_an_outlier():
    rng = np.random.default_rng(2)
    x, w = outlier_rows(), rng.normal(size=(64, 64)).astype(np.float32)
    gram, amax = reader_gram([w]), float(np.abs(x).max())
    pct = float(np.percentile(np.abs(x), 99.99))
    best, errors = search_threshold(x, gram, amax, (pct,))
    assert errors[best] == min(errors.values())
    assert errors[best] <= output_error(x, gram, amax) and errors[best] <= output_error(x, gram, pct)
    assert outlier_ratio(x) > 10 and outlier_ratio(np.random.default_rng(3).normal(size=(512, 64))) < 2


def test_mixed_precision_keeps_the_worst_layers_float_until_the_target(tiny, tmp_path, cli):
    from conftest import QUICK_QUANT

    out = tmp_path / "q"
    # a target int8 cannot reach: layers are kept float, up to the cap, and recorded
    code, printed, err = cli("quantize", tiny(), "-o", out, "--group-size", 32, *QUICK_QUANT, "--vision-target-cosine",
                       "0.9999999", "--vision-max-float-layers", 2)
    assert code == 0, err
    record = json.loads((out / "vision" / "calibration.json").read_text())
    kept = record["layers_kept_float"]
    assert len(kept) == 2 and record["int8_share"] < 1
    assert [r["layer"] for r in record["layers"] if r["precision"] == "float"] == sorted(kept)
    assert all({"cosine", "own_drop", "outlier_ratio", "precision", "scheme"} <= set(r) for r in record["layers"])
    assert all(r["scheme"].startswith("float" if r["precision"] == "float" else "W8A8: int8") for r in record["layers"])
    graph = onnx.load(out / "vision" / "vision_w8a8.onnx", load_external_data=False).graph
    readers = {n.input[0] for n in graph.node if n.op_type == "MatMul" and n.name.startswith(f"/vision/layers.{kept[0]}/")}
    quantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert readers and not readers & quantized  # the kept layer's MatMuls read float
    # said as it went and at the end, for the static graph and for the cpu path's dynamic one, which chooses its own
    dynamic = record["cpu_dynamic"]["layers_kept_float"]
    assert len(dynamic) == 2 and err.count("keeping layer") == 4 and err.count("per-token dynamic W8A8 cosine") == 2
    assert f"layers {kept} kept float" in printed and f"MatMuls int8, layers {dynamic} kept float" in printed


def test_mse_ranges_calibrate_end_to_end(tiny, tmp_path, cli):
    from conftest import QUICK_QUANT

    out = tmp_path / "q"
    code, _, err = cli("quantize", tiny(), "-o", out, "--group-size", 32, *QUICK_QUANT, "--vision-calib-method", "mse",
                       "--vision-max-float-layers", 0)
    assert code == 0, err
    record = json.loads((out / "vision" / "calibration.json").read_text())
    assert record["method"] == "mse" and record["layers_kept_float"] == [] and record["int8_share"] == 1
    assert record["held_out"]["cosine_mean"] > 0.99


def test_each_layers_alpha_is_searched_on_its_linears_error():
    import torch
    from torch import nn

    from vila_edge.quant.smoothquant import ALPHAS, _fake_int8, _scales, search_alphas

    torch.manual_seed(0)
    layer = nn.Module()
    layer.norm, layer.fc = nn.LayerNorm(64), nn.Linear(64, 96)
    x = torch.randn(256, 64)
    x[:, 5] *= 50  # an outlier channel: a small alpha leaves it in the activation, a large one moves it all
    act_max = {"0.norm": x.abs().amax(dim=0)}
    best = search_alphas(nn.ModuleList([layer]), (("norm", ("fc",)),), act_max, {"0.norm": [x]})["0.norm"]
    assert best in ALPHAS

    def error(alpha):
        s = _scales(act_max["0.norm"], layer.fc.weight.abs().amax(dim=0), alpha)
        got = _fake_int8(x / s, None, 127) @ _fake_int8(layer.fc.weight * s, 1, 63).T
        return float(((got - x @ layer.fc.weight.T) ** 2).mean())

    assert error(best) == min(error(a) for a in ALPHAS) and error(best) < error(0.2)


def test_the_alpha_search_is_the_default_and_one_alpha_can_be_asked_for(tiny, tmp_path, cli):
    from conftest import QUICK_QUANT

    from vila_edge.quant.smoothquant import ALPHAS

    out = tmp_path / "q"
    code, _, err = cli("quantize", tiny(), "-o", out, "--group-size", 32, *QUICK_QUANT)
    assert code == 0, err
    record = json.loads((out / "vision" / "calibration.json").read_text())
    assert record["smooth_alpha"] == "searched per layer"
    assert all(set(r["smooth_alpha"]) == {"layer_norm1", "layer_norm2"} and set(r["smooth_alpha"].values()) <= set(ALPHAS)
               for r in record["layers"])
    assert record["held_out"]["cosine_mean"] > 0.99
    code, _, err = cli("quantize", tiny(), "-o", tmp_path / "one", "--group-size", 32, *QUICK_QUANT, "--smooth-alpha", 0.3)
    assert code == 0, err
    record = json.loads((tmp_path / "one" / "vision" / "calibration.json").read_text())
    assert record["smooth_alpha"] == 0.3 and all(set(r["smooth_alpha"].values()) == {0.3} for r in record["layers"])


def test_the_cpu_path_gets_a_per_token_dynamic_graph_and_a_cpu_engine_runs_it(tiny, tmp_path, cli):
    from conftest import QUICK_QUANT

    out, engine = tmp_path / "q", tmp_path / "cpu"
    code, _, err = cli("quantize", tiny(), "-o", out, "--group-size", 32, *QUICK_QUANT)
    assert code == 0, err
    record = json.loads((out / "vision" / "calibration.json").read_text())
    dynamic = record["cpu_dynamic"]
    assert dynamic["held_out"]["cosine_mean"] > 0.99 and dynamic["quantized_matmuls"] > 0
    graph = onnx.load(out / "vision" / dynamic["file"], load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert "MatMulInteger" in ops and "QuantizeLinear" not in ops  # scales computed per row, nothing calibrated
    code, _, err = cli("build-engine", out, "-o", engine, "--target", "cpu", "--vision", "w8a8-dynamic")
    assert code == 0, err
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["vision"]["file"].endswith(dynamic["file"])
    from vila_edge.scenes import generated_images

    generated_images(1, seed=7)[0].save(tmp_path / "scene.png")
    code, printed, err = cli("caption", engine, "--image", tmp_path / "scene.png", "--prompt", "Describe.", "--format",
                             "jsonl", "--conv-mode", "vicuna_v1", "--max-new-tokens", 3)
    assert code == 0, err
    assert json.loads(printed)["image_tokens"] > 0

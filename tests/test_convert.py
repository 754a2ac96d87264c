"""`vila-edge convert`: the tiny HF-format NVILA / NVILA-Lite conversions (tests/tiny_nvila.py, which writes them
from VILA-layout folders as SGLang names them) converted back to the VILA layout load, hold the source's tensors,
agree on every config value the loader reads, and encode images as the source does; bad input writes nothing."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_nvila import build_nvila, build_nvila_lite, to_hf_nvila, to_hf_vila

from vila_edge.caption import Captioner
from vila_edge.checkpoint import SUBFOLDERS, load_checkpoint
from vila_edge.errors import UnsupportedError
from vila_edge.model.vlm import VilaModel

PADDED = ("model.embed_tokens.weight", "lm_head.weight")  # the HF copy adds rows for the media tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_dirs):
    """{"nvila": (VILA-layout source, its HF-format conversion), "vila": ...}, seeds as tiny_nvila.build_all's."""
    root = tmp_path_factory.mktemp("convert")
    nvila = build_nvila(root / "NVILA-8B-tiny", tokenizer_dirs["qwen2"], seed=10)
    lite = build_nvila_lite(root / "NVILA-Lite-2B-tiny", tokenizer_dirs["qwen2"], seed=20)
    return {"nvila": (nvila, to_hf_nvila(nvila, root / "NVILA-8B-hf-tiny")),
            "vila": (lite, to_hf_vila(lite, root / "NVILA-Lite-2B-hf-preview-tiny"))}


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    from conftest import run_cli

    root, out = tmp_path_factory.mktemp("converted"), {}
    for name, (_, hf) in tiny.items():
        code, stdout, err = run_cli("convert", hf, "-o", root / name, "--quiet")
        assert code == 0, err
        out[name] = (root / name, stdout)
    return out


def tensors(folder):
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    return state


@pytest.mark.parametrize("name", ["nvila", "vila"])
def test_the_conversion_holds_the_source_tensors(tiny, converted, name):
    src, out = load_checkpoint(tiny[name][0]).root, converted[name][0]
    for part in SUBFOLDERS:
        want, got = tensors(src / part), tensors(out / part)
        assert sorted(got) == sorted(want), part
        for key, tensor in want.items():
            mine = got[key][: len(tensor)] if part == "llm" and key in PADDED else got[key]
            assert mine.dtype == tensor.dtype and torch.equal(mine, tensor), (part, key)


@pytest.mark.parametrize("name", ["nvila", "vila"])
def test_the_conversion_reads_as_the_source(tiny, converted, name):
    src, out = load_checkpoint(tiny[name][0]), load_checkpoint(converted[name][0])
    lite_split = {"split": 0} if src.vision_layout.mode == "dynamic" else {}  # s2_max_split_size: unused for tiles
    assert out.vision_layout.__dict__ | lite_split == src.vision_layout.__dict__ | lite_split
    assert (out.family, out.projector_type, out.tokens_per_image) == (src.family, src.projector_type,
                                                                       src.tokens_per_image)
    assert (out.select_layer, out.select_feature, out.image_aspect_ratio, out.mm_hidden, out.model_max_length) == (
        src.select_layer, src.select_feature, src.image_aspect_ratio, src.mm_hidden, src.model_max_length)
    # the HF configs (as SGLang reads them) carry no num_video_frames: VILA's default, reported as one
    assert "num_video_frames" not in tiny[name][1].joinpath("config.json").read_text() and out.num_video_frames == 8
    assert out.vision_config == src.vision_config and out.preprocessor == src.preprocessor
    vocab = out.llm_config["vocab_size"]
    assert out.llm_config == {**src.llm_config, "vocab_size": vocab} and vocab > src.llm_config["vocab_size"]


@pytest.mark.parametrize("name", ["nvila", "vila"])
def test_the_conversion_encodes_images_as_the_source(tiny, converted, name):
    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 256, (112, 168, 3), dtype=np.uint8))
    blocks = []
    for folder in (tiny[name][0], converted[name][0]):
        ckpt = load_checkpoint(folder)
        blocks.append(Captioner(ckpt, VilaModel(ckpt, dtype="float32"), "qwen2").encode([im]).blocks)
    assert len(blocks[0]) == len(blocks[1]) > 0
    for a, b in zip(*blocks):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_the_command_reports_its_defaults_and_records_them(converted):
    out, stdout = converted["vila"]
    assert "wrote" in stdout and "llm/ " in stdout and "defaults (not in" in stdout and "num_video_frames=8" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["vila_edge_convert"]["defaults"]["num_video_frames"] == 8
    assert "image_aspect_ratio" not in config["vila_edge_convert"]["defaults"]  # the tiny HF config has it


def test_sharded_input_and_no_torch(tiny, converted, tmp_path):
    """A two-shard HF folder with an index converts, torch and transformers unimportable, to the same tensors."""
    from conftest import cli_without_quantize_extra

    hf = tmp_path / "hf"
    shutil.copytree(tiny["nvila"][1], hf)
    state = load_file(hf / "model.safetensors")
    (hf / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, hf / file, metadata={"format": "pt"})
    weight_map = {k: file for file, keys in halves.items() for k in keys}
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    [(code, _, err)] = cli_without_quantize_extra(["convert", str(hf), "-o", str(tmp_path / "out"), "--quiet"])
    assert code == 0, err
    for part in SUBFOLDERS:
        assert (tmp_path / "out" / part / "model.safetensors.index.json").is_file()
        assert tensors(tmp_path / "out" / part).keys() == tensors(converted["nvila"][0] / part).keys()
    assert torch.equal(tensors(tmp_path / "out" / "llm")["lm_head.weight"],
                       tensors(converted["nvila"][0] / "llm")["lm_head.weight"])
    load_checkpoint(tmp_path / "out")


def test_bad_input_writes_nothing(tiny, tmp_path, cli):
    code, _, err = cli("convert", tiny["nvila"][0], "-o", tmp_path / "a")
    assert code == 1 and "not an HF-format NVILA conversion (this is a VILA-layout checkpoint" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "a").exists()

    hf = tmp_path / "hf"
    shutil.copytree(tiny["vila"][1], hf)
    save_file({"extra.weight": torch.zeros(2)}, hf / "model-extra.safetensors")
    code, _, err = cli("convert", hf, "-o", tmp_path / "b")
    assert code == 1 and "model-extra.safetensors: tensor 'extra.weight' belongs to no part" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".b.tmp-*"))


def test_overwrite_and_the_loader_names_the_command(tiny, converted, cli):
    out = converted["vila"][0]
    code, _, err = cli("convert", tiny["vila"][1], "-o", out)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    code, _, err = cli("convert", tiny["vila"][1], "-o", out, "--overwrite", "--quiet")
    assert code == 0, err
    with pytest.raises(UnsupportedError, match=r"rewrite it with `vila-edge convert .* -o DST`"):
        load_checkpoint(tiny["vila"][1])

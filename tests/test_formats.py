"""On-disk contracts read from one place: suffixes agree between commands, and the cpu engine checks the layout
its weight file carries."""

import shutil

import pytest
from safetensors.numpy import load_file, save_file

from vila_edge.capture import open_source
from vila_edge.demo import write_sample_image
from vila_edge.errors import CheckpointError
from vila_edge.formats import CPU_LAYOUT, CPU_LLM_FILE, IMAGE_SUFFIXES, check_layout
from vila_edge.media import media_files
from vila_edge.quant.options import parse_calib


def test_a_tif_folder_is_media_for_quantize_and_a_source_for_caption(tmp_path):
    for i, suffix in enumerate((".tif", ".gif", ".png")):
        write_sample_image(tmp_path / f"{i:02d}{suffix}", size=32, seed=i)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.suffix for p in media_files(tmp_path)] == [".tif", ".gif", ".png"]
    assert parse_calib(f"media:{tmp_path}").path == tmp_path
    source = open_source(str(tmp_path))
    assert [frame.index for frame in source] == [0, 1, 2]
    assert {".jpg", ".tiff", ".webp"} <= set(IMAGE_SUFFIXES)


def test_check_layout_names_the_file_and_the_fix(tmp_path):
    check_layout(tmp_path / "llm.safetensors", {"layout": CPU_LAYOUT}, CPU_LAYOUT, "rebuild it")
    with pytest.raises(CheckpointError, match=r"llm.safetensors: weight layout 'q4-other/2', this runtime reads 'q4-pair64/1'; rebuild it"):
        check_layout(tmp_path / "llm.safetensors", {"layout": "q4-other/2"}, CPU_LAYOUT, "rebuild it")
    with pytest.raises(CheckpointError, match="weight layout None"):
        check_layout(tmp_path / "llm.safetensors", {}, CPU_LAYOUT, "rebuild it")


def test_the_cpu_engine_reads_the_layout_in_its_weight_file(caption_engine, tmp_path, cli):
    engine = tmp_path / "engine"
    shutil.copytree(caption_engine, engine)
    weights = engine / CPU_LLM_FILE
    save_file(load_file(weights), weights, metadata={"layout": "q4-pair32/9"})  # the manifest still says q4-pair64/1
    code, _, err = cli("caption", engine, "--prompt", "Hi", "--max-new-tokens", 2)
    assert code == 1 and "llm.safetensors: weight layout 'q4-pair32/9'" in err and "build-engine" in err

"""Memory plans: every recipe on every GPU target, the fits and the refusals the issue names."""

import json

import pytest

from vila_edge.plan import RECIPES, llm_linear_params, load_recipe, memory_plan, vision_params
from vila_edge.targets import TARGETS

RECIPE_NAMES = sorted(p.stem for p in RECIPES.glob("*.json"))
GPU_TARGETS = [t for t in TARGETS.values() if t.sm is not None]


def test_the_recipes_the_issue_names_are_there():
    assert set(RECIPE_NAMES) >= {"vila1.5-3b", "vila1.5-3b-s2", "llama-3-vila1.5-8b", "vila1.5-13b", "vila1.5-40b", "nvila-8b",
                                "nvila-15b", "nvila-lite-2b", "llava-1.5-7b", "llava-1.5-13b", "llama-vid-7b"}


def test_parameter_counts_match_the_published_model_sizes():
    assert 2.4e9 < llm_linear_params(load_recipe("vila1.5-3b")["llm"]) < 2.7e9  # Sheared-LLaMA-2.7B without embeddings
    assert 12.0e9 < llm_linear_params(load_recipe("vila1.5-13b")["llm"]) < 13.0e9
    assert 0.38e9 < vision_params(load_recipe("vila1.5-3b")["vision"]) < 0.43e9  # SigLIP-so400m, 26 of 27 layers
    assert 5.5e9 < vision_params(load_recipe("vila1.5-40b")["vision"]) < 6.2e9  # InternViT-6B


@pytest.mark.parametrize("recipe", RECIPE_NAMES)
@pytest.mark.parametrize("target", GPU_TARGETS, ids=lambda t: t.name)
def test_every_recipe_gets_a_plan_on_every_target(recipe, target):
    tiled = "tiling" in load_recipe(recipe)["vision"]
    plan = memory_plan(load_recipe(recipe), target, max_tiles=1 if tiled else None)  # NVILA: one tile, 256 tokens
    assert all(gb > 0 for gb in plan.parts_gb.values())
    assert plan.max_multimodal_len == plan.max_batch * load_recipe(recipe)["tokens_per_image"]
    assert plan.fits == (plan.total_gb <= target.usable_gb)


@pytest.mark.parametrize("recipe,target,fits", [
    ("vila1.5-3b", "orin-nano", True), ("vila1.5-13b", "orin-nano", False), ("vila1.5-13b", "orin", True),
    ("vila1.5-13b", "rtx4090", True), ("vila1.5-40b", "rtx4090", False), ("vila1.5-40b", "a100", True),
])
def test_fits_where_published_numbers_say_it_runs(recipe, target, fits):
    # VILA's README: 13B AWQ runs on a 4090, 40B AWQ is OOM there and runs on an A100
    assert memory_plan(load_recipe(recipe), TARGETS[target]).fits is fits


def test_a_longer_context_grows_only_the_kv_cache():
    short, long = (memory_plan(load_recipe("vila1.5-3b"), TARGETS["orin"], max_seq_len=n) for n in (3072, 12288))
    assert long.parts_gb["kv cache (fp16, max_seq_len)"] == pytest.approx(4 * short.parts_gb["kv cache (fp16, max_seq_len)"], rel=1e-2)
    assert {k: v for k, v in long.parts_gb.items() if "kv" not in k} == {k: v for k, v in short.parts_gb.items() if "kv" not in k}


def test_plan_cli(cli):
    code, out, _ = cli("plan", "--recipe", "vila1.5-13b", "--target", "orin-nano")
    assert code == 1 and "does NOT fit" in out and "GB" in out
    code, out, _ = cli("plan", "--recipe", "vila1.5-3b", "--target", "orin-nano", "--format", "json")
    assert code == 0 and json.loads(out)["fits"] and json.loads(out)["max_multimodal_len"] == 196
    code, _, err = cli("plan", "--recipe", "vila9", "--target", "orin")
    assert code == 2 and "known: " in err and "Traceback" not in err


def test_the_vision_plan_counts_at_its_precision():
    recipe = load_recipe("vila1.5-3b")
    plans = {p: memory_plan(recipe, TARGETS["orin-nano"], vision_precision=p) for p in ("int8", "fp16", "none")}
    int8, fp16 = plans["int8"].parts_gb["vision engine (int8)"], plans["fp16"].parts_gb["vision engine (fp16)"]
    assert fp16 == pytest.approx(2 * int8, rel=1e-2) and 0.38 < int8 < 0.43  # SigLIP-so400m: +0.4 GB in fp16
    assert plans["none"].parts_gb["vision engine (none)"] == 0
    assert plans["none"].parts_gb["activations"] < plans["int8"].parts_gb["activations"]  # no tower activations
    with pytest.raises(Exception, match="vision precision 'int4'"):
        memory_plan(recipe, TARGETS["orin"], vision_precision="int4")


def test_plan_cli_takes_the_vision_choice_and_labels_unsupported_jetsons(cli):
    code, int8, _ = cli("plan", "--recipe", "vila1.5-3b", "--target", "orin-nano", "--format", "json")
    code16, fp16, _ = cli("plan", "--recipe", "vila1.5-3b", "--target", "orin-nano", "--format", "json", "--vision", "fp16")
    assert code == code16 == 0 and json.loads(fp16)["total_gb"] > json.loads(int8)["total_gb"] + 0.35
    _, text, _ = cli("plan", "--recipe", "vila1.5-3b", "--target", "orin-nano")
    assert "not officially supported by TensorRT-LLM v0.12.0-jetson" in text
    _, text, _ = cli("plan", "--recipe", "vila1.5-3b", "--target", "orin")
    assert "not officially supported" not in text


def test_nvila_is_sized_for_its_tiles():
    """NVILA-8B alone in its prompt: 1 + 4 + 9..12 tower passes and rows·cols·256 tokens at max_tiles 12; 1 + 4 + 1
    and 256 below 9 tiles (VILA finds no grid); one pass at --max-tiles 1."""
    recipe, h100 = load_recipe("nvila-8b"), TARGETS["h100"]
    full = memory_plan(recipe, h100, max_batch=1)
    assert (full.max_multimodal_len, full.tower_batch, full.max_tiles) == (12 * 256, 17, 12)
    assert (memory_plan(recipe, h100, max_batch=1, max_tiles=4).tower_batch, memory_plan(recipe, h100, max_batch=1,
            max_tiles=4).max_multimodal_len) == (6, 256)
    one = memory_plan(recipe, h100, max_batch=2, max_tiles=1)
    assert (one.max_multimodal_len, one.tower_batch) == (2 * 256, 2)
    assert full.parts_gb["activations"] > memory_plan(recipe, h100, max_batch=1, max_tiles=1).parts_gb["activations"]
    with pytest.raises(Exception, match="3072 tokens leave no room.*--max-tiles"):
        memory_plan(recipe, TARGETS["orin"])  # 2048 prompt tokens by default
    assert memory_plan(load_recipe("vila1.5-3b-s2"), TARGETS["orin"]).tower_batch == 5  # S2: 1 + 4 passes, 196 tokens


def test_nvila_lite_and_nvila_15b_are_sized_for_their_tiles():
    """NVILA-Lite-2B: up to 12 tiles and the thumbnail, 121 tokens each; NVILA-15B tiles as NVILA-8B, with a projector
    plan for one image's 12 blocks."""
    h100 = TARGETS["h100"]
    lite = memory_plan(load_recipe("nvila-lite-2b"), h100, max_batch=1)
    assert (lite.max_multimodal_len, lite.tower_batch, lite.projector_batch) == (13 * 121, 13, 0)
    assert memory_plan(load_recipe("nvila-lite-2b"), TARGETS["orin-nano"], max_tiles=4).max_multimodal_len == 5 * 121
    big = memory_plan(load_recipe("nvila-15b"), h100, max_batch=1)
    assert (big.max_multimodal_len, big.tower_batch, big.projector_batch) == (12 * 256, 17, 12)


def test_llama_vid_is_sized_for_frames_that_stream_through_the_tower():
    recipe = load_recipe("llama-vid-7b")
    hour = memory_plan(recipe, TARGETS["orin"], images=3600, max_seq_len=8192, max_input_len=7800)
    minute = memory_plan(recipe, TARGETS["orin"], images=60, max_seq_len=8192, max_input_len=7800)
    assert hour.max_multimodal_len == 7200 and minute.max_multimodal_len == 120  # 2 tokens a frame
    # the tower runs a few frames at a time: an hour's activations are a minute's
    assert hour.parts_gb["activations"] == minute.parts_gb["activations"]
    # BERT-base with 6 cross-attention blocks over 1408-wide features, 32 queries, projections to 4096: ~193 M in fp16
    assert 0.37 < hour.parts_gb["q-former + projections (fp16)"] < 0.40
    assert 0.95 < vision_params(recipe["vision"]) / 1e9 < 1.0  # EVA-ViT-g: ~1 B parameters
    assert hour.fits and not memory_plan(recipe, TARGETS["orin-nano"], images=1800, max_seq_len=4096,
                                         max_input_len=3800).fits

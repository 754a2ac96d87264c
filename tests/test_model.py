"""The reference pipeline against an independent VILA implementation written here from the published code."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from test_media import write_video
from test_projector import flat_square_3x3, flat_square_head, flat_square_may24
from test_prompt import vila_tokenizer_image_token
from transformers import AutoModelForCausalLM, AutoTokenizer, SiglipVisionModel
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from vila_edge.checkpoint import load_checkpoint
from vila_edge.model.vlm import VilaModel

VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: {q} ASSISTANT:"
)
QWEN2 = "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"


def images(n):
    rng = np.random.default_rng(7)
    return [Image.fromarray((rng.random((40 + 13 * i, 90, 3)) * 255).astype(np.uint8)) for i in range(n)]


@torch.no_grad()
def independent_image_embeds(root, pixel_values, nvila=False, tower=None):
    """hidden_states[-2] of the HF tower through the projector written out from VILA's code: [B, T, H]."""
    if tower is None:
        tower = SiglipVisionModel.from_pretrained(root / "vision_tower", dtype=torch.float32).eval()
    feats = tower(pixel_values, output_hidden_states=True).hidden_states[-2]

    ptype = json.loads((root / "mm_projector" / "config.json").read_text())["mm_projector_type"]
    w = {k: v.float() for k, v in load_file(root / "mm_projector" / "model.safetensors").items()}
    if ptype == "mlp2x_gelu":  # LLaVA-1.5's projector: Linear, GELU, Linear on every patch
        x = F.gelu(F.linear(feats, w["layers.0.weight"], w["layers.0.bias"]))
        return F.linear(x, w["layers.2.weight"], w["layers.2.bias"])
    b, n, c = feats.shape
    g = int(n**0.5)
    square = {"mlp_downsample": flat_square_head if nvila else flat_square_may24,
              "mlp_downsample_3x3_fix": flat_square_3x3}[ptype](feats.reshape(b, g, g, c))
    x = square.reshape(b, -1, square.shape[-1])
    x = F.layer_norm(x, x.shape[-1:], w["layers.1.weight"], w["layers.1.bias"])
    x = F.gelu(F.linear(x, w["layers.2.weight"], w["layers.2.bias"]))
    if ptype == "mlp_downsample_3x3_fix":
        x = F.layer_norm(x, x.shape[-1:], w["layers.4.weight"], w["layers.4.bias"])
        x = F.gelu(F.linear(x, w["layers.5.weight"], w["layers.5.bias"]))
        x = F.linear(x, w["layers.7.weight"], w["layers.7.bias"])
    else:
        x = F.linear(x, w["layers.4.weight"], w["layers.4.bias"])
    return x


@torch.no_grad()
def independent_vila(root, pics, question, nvila=False, max_new_tokens=8):
    """VILA1.5 (May24) or NVILA (HEAD) inference from the checkpoint files, without vila_edge."""
    tok = AutoTokenizer.from_pretrained(root / "llm")
    llm = AutoModelForCausalLM.from_pretrained(root / "llm", dtype=torch.float32).eval()
    tower = SiglipVisionModel.from_pretrained(root / "vision_tower", dtype=torch.float32).eval()
    pre = json.loads((root / "vision_tower" / "preprocessor_config.json").read_text())
    proc = SiglipImageProcessorPil(**{k: v for k, v in pre.items() if "type" not in k and "class" not in k})
    side = pre["size"]["height"]
    pixels = proc(images=[p.resize((side, side), Image.Resampling.BICUBIC) for p in pics], return_tensors="pt")
    x = independent_image_embeds(root, pixels["pixel_values"], nvila, tower)

    prompt = (QWEN2 if nvila else VICUNA).format(q=("<image>" if nvila else "<image>\n") * len(pics) + question)
    ids = vila_tokenizer_image_token(prompt, tok)
    embed = llm.get_input_embeddings()
    parts, run, k = [], [], 0
    for t in ids + [None]:
        if t == -200 or t is None:
            parts.append(embed(torch.tensor(run, dtype=torch.long)))
            run = []
            if t == -200:
                parts.append(x[k])
                if nvila:  # HEAD: each media block is followed by embed("\n")
                    parts.append(embed(torch.tensor(tok("\n", add_special_tokens=False).input_ids)))
                k += 1
        else:
            run.append(t)
    inputs = torch.cat(parts)[None]
    out = llm.generate(inputs_embeds=inputs, attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long),
                       max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id)
    new = out[0].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return new, inputs.shape[1], x


CASES = [
    ("mlp_downsample", "llama", 1),
    ("mlp_downsample", "llama", 2),
    ("mlp_downsample_3x3_fix", "llama", 1),
    ("mlp_downsample", "qwen2", 1),
]


@pytest.mark.parametrize("ptype,arch,n_images", CASES)
def test_caption_matches_independent_implementation(tiny, cli, tmp_path, ptype, arch, n_images):
    root = tiny(ptype, arch=arch)
    paths = []
    for i, im in enumerate(images(n_images)):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    conv = "qwen2" if arch == "qwen2" else "vicuna_v1"
    code, out, err = cli("caption", root, "--image", *paths, "--prompt", "What is this?", "--conv-mode", conv,
                         "--max-new-tokens", 8, "--temperature", 0, "--backend", "torch", "--format", "jsonl")
    assert code == 0, err
    record = json.loads(out)
    want, prompt_len, _ = independent_vila(root, images(n_images), "What is this?", nvila=arch == "qwen2")
    assert record["token_ids"] == want
    assert record["prompt_tokens"] == prompt_len
    per_image = load_checkpoint(root).tokens_per_image
    assert record["image_tokens"] == n_images * per_image
    assert {"source", "text", "ttft_s", "decode_tok_s"} <= set(record)


def test_projector_order_override_transposes_the_token_grid(tiny):
    ckpt = load_checkpoint(tiny())
    pixels = np.random.default_rng(0).standard_normal((1, 3, 70, 70)).astype(np.float32)
    col = VilaModel(ckpt).encode_images(pixels)
    row = VilaModel(ckpt, projector_order="row").encode_images(pixels)
    assert not torch.allclose(col, row)
    # the same 9 tokens, reordered: column-major is the transpose of the 3x3 token grid
    assert torch.allclose(col[0].reshape(3, 3, -1).transpose(0, 1), row[0].reshape(3, 3, -1))


def test_vision_features_are_hidden_states_minus_two(tiny):
    ckpt = load_checkpoint(tiny())
    model = VilaModel(ckpt)
    x = torch.randn(2, 3, 70, 70)
    tower = SiglipVisionModel.from_pretrained(ckpt.vision_dir, dtype=torch.float32)
    with torch.no_grad():
        ours = model.vision(x)
        direct = tower(x, output_hidden_states=True).hidden_states
    assert len(direct) == 4  # embeddings + 3 layers: [-2] is the output of layer 2, before the last layer
    assert torch.equal(ours, direct[2]) and ours.shape == (2, 25, 32)


def test_kv_cache_decode_matches_a_full_forward(tiny):
    ckpt = load_checkpoint(tiny(arch="qwen2"))
    model = VilaModel(ckpt)
    ids = [5, 17, 99, 3, 250, 41]
    model.reset()
    logits = [model.prefill(model.embed(ids[:3]))] + [model.decode(t) for t in ids[3:]]
    with torch.no_grad():
        full = model.llm(input_ids=torch.tensor([ids])).logits[0, 2:].numpy()
    # different matmul shapes round differently: allow float32 noise relative to the logits' scale
    assert np.abs(np.stack(logits) - full).max() <= 1e-5 * np.abs(full).max()


def test_video_caption_uses_one_block_per_frame(tiny, cli, tmp_path):
    video = write_video(tmp_path / "clip.avi", 12, size=48)
    code, out, err = cli("caption", tiny(), "--video", video, "--prompt", "What happens?", "--conv-mode",
                         "vicuna_v1", "--max-new-tokens", 3, "--format", "jsonl")
    assert code == 0, err
    record = json.loads(out)
    assert record["images"] == 2 and record["image_tokens"] == 2 * 9  # num_video_frames 2 in the config
    code, out, _ = cli("caption", tiny(), "--video", video, "--num-frames", 3, "--prompt", "?", "--conv-mode",
                       "vicuna_v1", "--max-new-tokens", 1, "--format", "jsonl")
    assert json.loads(out)["image_tokens"] == 27


def test_the_oracle_comparison_catches_a_wrong_token_order(tiny, cli, tmp_path):
    """The tiny models are sensitive enough that the row-major order of a VILA1.5 projector changes the answer."""
    root = tiny()
    images(1)[0].save(tmp_path / "0.png")
    want, _, _ = independent_vila(root, images(1), "What is this?")
    code, out, _ = cli("caption", root, "--image", tmp_path / "0.png", "--prompt", "What is this?", "--conv-mode",
                       "vicuna_v1", "--max-new-tokens", 8, "--format", "jsonl", "--projector-order", "row")
    assert code == 0 and json.loads(out)["token_ids"] != want

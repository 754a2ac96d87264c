"""What every engine export shares: the AWQ source checkpoint and its LLM facts, the int4 linears unpacked
and stacked, the vision ONNX copied in (or converted to fp16 for TensorRT, from a checkpoint quantized before
quantize wrote those files), and the front (tokenizer, template, preprocessing) in the manifest."""

import dataclasses
import hashlib
import platform
import shutil
from pathlib import Path

import numpy as np
import torch

from vila_edge import __version__
from vila_edge.arch import get_llm
from vila_edge.awq_checkpoint import is_awq
from vila_edge.checkpoint import Checkpoint, load_checkpoint
from vila_edge.conversation import get_template, resolve_conv_mode
from vila_edge.errors import UnsupportedError, UsageError
from vila_edge.formats import (
    ATTENTION_OF,
    ENGINE_TOKENIZER_DIR,
    PROJECTOR_OF,
    QUESTION_TOKENIZER_DIR,
    VISION_DIR,
    VISION_FILES,
    VISION_FP16_FILES,
    VISION_FP16_SOURCE,
)
from vila_edge.int4 import unpack_awq_gemm
from vila_edge.llamavid_format import TOKENIZER_FILES as QUESTION_TOKENIZER_FILES
from vila_edge.quant.options import VisionQuantOptions
from vila_edge.runtime.tokenizer import save_engine_tokenizer
from vila_edge.scenes import generated_images


def llm_spec(ckpt: Checkpoint) -> dict:
    """What an engine needs to know about the LLM, as its manifest records it; refuses what engines cannot run."""
    c, where = ckpt.llm_config, ckpt.llm_dir / "config.json"
    arch = get_llm(c["model_type"], str(where))
    if c.get("hidden_act", "silu") != "silu" or c.get("mlp_bias"):
        raise UnsupportedError(f"{where}: vila-edge engines run SiLU MLPs without bias (hidden_act {c.get('hidden_act')!r})")
    if c.get("attention_bias") and not arch.qkv_bias:
        raise UnsupportedError(f"{where}: attention_bias on a {arch.model_type} is not supported by vila-edge engines")
    rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    rope.setdefault("rope_theta", c.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in arch.rope_types:
        raise UnsupportedError(f"{where}: rope type {rope_type!r} is not supported; supported: {', '.join(arch.rope_types)}")
    heads = c["num_attention_heads"]
    return {
        "architecture": arch.model_type,
        "hidden": c["hidden_size"],
        "layers": c["num_hidden_layers"],
        "heads": heads,
        "kv_heads": c.get("num_key_value_heads") or heads,
        "head_dim": c.get("head_dim") or c["hidden_size"] // heads,
        "intermediate": c["intermediate_size"],
        "vocab": c["vocab_size"],
        "rms_eps": c.get("rms_norm_eps", 1e-6),
        "rope": {**rope, "rope_type": rope_type},
        "max_position_embeddings": c["max_position_embeddings"],
        "qkv_bias": arch.qkv_bias,
        "group_size": c["quantization_config"]["group_size"],
        "tie_word_embeddings": bool(c.get("tie_word_embeddings")),
    }


def read_llm_state(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    state = {}
    for f in ckpt.weights["llm"]:
        state.update(load_file(f))
    return state


def stacked_awq(state: dict[str, np.ndarray], names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The AWQ linears `names` (e.g. q, k, v) unpacked and stacked along the output, in that order:
    (q uint8 [N, K], scales float32 [N, K/G], zeros uint8 [N, K/G])."""
    unpacked = [unpack_awq_gemm(*(torch.from_numpy(state[f"{n}.{s}"]) for s in ("qweight", "qzeros", "scales")))
                for n in names]
    q, scales, zeros = (torch.cat(t).numpy() for t in zip(*unpacked))
    return q, scales, zeros


def fingerprint(ckpt: Checkpoint) -> str:
    """sha256 over the configs and every weight file's name, size and header: cheap, and changes with the weights."""
    h = hashlib.sha256()
    for folder in (ckpt.root, ckpt.llm_dir, ckpt.vision_dir, ckpt.projector_dir):
        for f in sorted(folder.glob("*.json")):
            h.update(f.name.encode() + f.read_bytes())
    for files in ckpt.weights.values():
        for f in files:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                h.update(f.name.encode() + str(f.stat().st_size).encode() + fh.read(min(n, 1 << 26)))
    return h.hexdigest()


def copy_vision(ckpt: Checkpoint, vision: str, out: Path) -> dict | None:
    """The vision ONNX of kind `vision` (formats.VISION_FILES: ONNX Runtime's; VISION_FP16_FILES: TensorRT's) into
    out/vision; returns the manifest's vision fields. A checkpoint quantized before the TensorRT files existed gets
    its file converted here from the fp32 one beside it, checked as quantize checks it (the check goes in the manifest)."""
    if vision == "none":
        return None
    name = {**VISION_FILES, **VISION_FP16_FILES}[vision]
    src = ckpt.root / VISION_DIR / name
    source = src.with_name(VISION_FP16_SOURCE.get(name, name))
    if not source.is_file():
        raise UsageError(
            f"{src}: missing; engines take the vision tower as ONNX from `vila-edge quantize` (--vision w8a8 writes "
            f"{', '.join([*VISION_FILES.values(), *VISION_FP16_FILES.values()])}). Re-quantize, or pass --vision none for text only"
        )
    (out / VISION_DIR).mkdir()
    spec = {
        "file": f"{VISION_DIR}/{name}",
        "precision": vision,
        "image_size": ckpt.image_size,
        "tokens_per_image": ckpt.tokens_per_image,
        "projector": ckpt.projector_type,
        "projector_order": ckpt.projector_order(),
    }
    if ckpt.llamavid is not None:  # LLaMA-VID: the tower's file holds the tower alone, its attention graph beside it
        spec["attention_file"] = f"{VISION_DIR}/{_copy_onnx(src.with_name(ATTENTION_OF[name]), out / VISION_DIR)}"
    elif ckpt.vision_layout.channel_copies > 1:  # S2 / NVILA: the tower's file holds no projector, which sits beside it
        spec["projector_file"] = f"{VISION_DIR}/{_copy_onnx(src.with_name(PROJECTOR_OF[name]), out / VISION_DIR)}"
    if not src.is_file():
        return {**spec, "tensorrt_fp16": _converted_now(ckpt, source, out / VISION_DIR / name)}
    _copy_onnx(src, out / VISION_DIR)
    return spec


def _copy_onnx(src: Path, folder: Path) -> str:
    """src (and its external weights) into folder; returns its name."""
    if not src.is_file():
        raise UsageError(f"{src}: missing; the checkpoint was quantized before vila-edge exported this graph apart from "
                         "the tower (a multi-scale projector, LLaMA-VID's attention). Re-quantize it, or pass --vision "
                         "none for text only")
    for f in (src, src.with_name(src.name + ".data")):
        if f.is_file():
            shutil.copy2(f, folder / f.name)
    return src.name


def _converted_now(ckpt: Checkpoint, source: Path, dst: Path) -> dict:
    """dst converted from source (the checkpoint predates quantize writing it), checked on quantize's held-out images."""
    from .vision_fp16 import tensorrt_fp16
    from .vision_w8a8 import HELD_OUT_SEED, pixels_of

    pixels = pixels_of(ckpt, generated_images(VisionQuantOptions.held_out, seed=HELD_OUT_SEED))
    return {**tensorrt_fp16(source, dst, pixels), "converted_by": "build-engine (the checkpoint has no such file)"}


def load_awq_source(source: str | Path) -> tuple[Checkpoint, dict]:
    """(the quantized checkpoint, its llm_spec); refuses a checkpoint that is not AWQ int4."""
    ckpt = load_checkpoint(source)
    if not is_awq(ckpt.llm_config):
        raise UsageError(
            f"{ckpt.llm_dir}: not AWQ-quantized; engines run int4 weights. "
            f"Quantize first: vila-edge quantize {ckpt.root} -o QUANTIZED"
        )
    return ckpt, llm_spec(ckpt)


def write_front(ckpt: Checkpoint, source: str | Path, conv_mode: str | None, folder: Path) -> dict:
    """The tokenizer into folder/tokenizer; returns the manifest fields every engine carries (source,
    where it was made, the prompt side, the image preprocessing)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ckpt.llm_dir)
    mode, _ = resolve_conv_mode(ckpt, conv_mode, tokenizer)
    save_engine_tokenizer(tokenizer, folder / ENGINE_TOKENIZER_DIR)
    text = {"conv_mode": get_template(mode).name, "family": ckpt.family.name, "model_max_length": ckpt.model_max_length,
            "num_video_frames": ckpt.num_video_frames, "tokenizer": ENGINE_TOKENIZER_DIR}
    if ckpt.question_tokenizer_dir is not None:  # LLaMA-VID's Q-Former vocabulary (question.QuestionTokenizer)
        (folder / QUESTION_TOKENIZER_DIR).mkdir()
        for name in QUESTION_TOKENIZER_FILES:
            if (ckpt.question_tokenizer_dir / name).is_file():
                shutil.copy2(ckpt.question_tokenizer_dir / name, folder / QUESTION_TOKENIZER_DIR / name)
        text["question_tokenizer"] = QUESTION_TOKENIZER_DIR
    return {
        "source": {"path": str(Path(source).resolve()), "name": ckpt.name, "fingerprint": fingerprint(ckpt)},
        "built_on": {"machine": platform.machine(), "python": platform.python_version(), "vila_edge": __version__},
        "text": text,
        "preprocessor": ckpt.preprocessor,
        "image_aspect_ratio": ckpt.image_aspect_ratio,
        "vision_layout": dataclasses.asdict(ckpt.vision_layout),
    }

"""LLaMA-VID's attention part (model/llamavid.py: the Q-Former over a frame's features, token generation and
mm_projector) -> ONNX, for `vila-edge quantize` beside the W8A8 tower: `image_features` [N, P+1, C] float32 (the
tower's output, class token kept) and `question_ids` [1, L] int64 (the question's Q-Former ids, question.py; L
dynamic, 1..256) -> `frame_tokens` [N, T, H] float32, per frame [context, content...]. fp32, and an fp16 copy for
TensorRT checked against it with ONNX Runtime (the W8A8 tower's int8 stops at the tower: the attention stays float).

The tower itself is exported alone (vision_onnx.export_tower_onnx), as for a multi-scale checkpoint: the feature
cache keeps the tower's output, and one question conditions every frame after it."""

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vila_edge.formats import ATTENTION_FP16_FILE, ATTENTION_FP32_FILE
from vila_edge.question import QuestionTokenizer
from vila_edge.runtime.onnx_vision import FEATURES, FRAME_TOKENS, QUESTION_IDS

from .onnx_checks import cosine, unfused_session
from .onnx_fp16 import convert_file
from .vision_onnx import OPSET, save_onnx

# the question the attention is calibrated and measured with (quantize's held-out cosine): a captioning request
CALIBRATION_QUESTION = "Describe the image in detail."
FP16_MIN_COSINE = 0.999  # the fp16 attention against the fp32 one, below: a warning


class _Attention(nn.Module):
    """The graph's signature: named inputs, one output."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, image_features: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        return self.attention(image_features, question_ids)


def calibration_ids(ckpt) -> np.ndarray:
    """[L] int64: CALIBRATION_QUESTION through the checkpoint's Q-Former tokenizer."""
    return QuestionTokenizer(ckpt.question_tokenizer_dir)(CALIBRATION_QUESTION)


@torch.no_grad()
def export_attention_onnx(attention: nn.Module, features: np.ndarray, ids: np.ndarray, path: Path) -> None:
    """attention (LlamaVidAttention, float32) to `path`, traced on one frame's `features` [1, P+1, C] and `ids` [L]."""
    import onnx

    module = _Attention(attention.float().eval().cpu())
    example = (torch.from_numpy(np.ascontiguousarray(features[:1], dtype=np.float32)),
               torch.from_numpy(np.asarray(ids, dtype=np.int64))[None])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        with warnings.catch_warnings():  # the tracer's notes on shape-dependent branches (fixed per checkpoint)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, example, str(Path(tmp) / path.name), dynamo=False, opset_version=OPSET,
                input_names=[FEATURES, QUESTION_IDS], output_names=[FRAME_TOKENS], do_constant_folding=True,
                dynamic_axes={FEATURES: {0: "frames"}, QUESTION_IDS: {1: "question_length"}, FRAME_TOKENS: {0: "frames"}},
            )
        model = onnx.load(Path(tmp) / path.name)
    save_onnx(model, path)


def torch_frame_tokens(attention: nn.Module, ids: np.ndarray, batch: int):
    """features [n, P+1, C] -> frame tokens [n, T, H] through the PyTorch attention, `batch` frames a call."""
    question = torch.from_numpy(np.asarray(ids, dtype=np.int64))[None]

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([attention(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])), question).float().numpy()
                               for i in range(0, len(x), batch)])
    return run


def ort_frame_tokens(sess, ids: np.ndarray, batch: int):
    """The same through an ONNX Runtime session of the attention graph."""
    question = np.asarray(ids, dtype=np.int64)[None]

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([sess.run([FRAME_TOKENS], {FEATURES: np.ascontiguousarray(x[i : i + batch], dtype=np.float32),
                                                         QUESTION_IDS: question})[0] for i in range(0, len(x), batch)])
    return run


def attention_fp16(folder: Path, features: np.ndarray, ids: np.ndarray, batch: int, threads: int | None = None) -> dict:
    """ATTENTION_FP16_FILE converted from ATTENTION_FP32_FILE in `folder` for TensorRT; its per-frame cosine against
    the fp32 file on `features` with `ids` (ONNX Runtime, graph optimizations off, as vision_w8a8.fp16_agreement does)."""
    src, dst = folder / ATTENTION_FP32_FILE, folder / ATTENTION_FP16_FILE
    moved = convert_file(src, dst)
    got, want = (ort_frame_tokens(unfused_session(f, threads), ids, batch)(features) for f in (dst, src))
    cos = cosine(got, want)
    if cos.min() < FP16_MIN_COSINE:
        warnings.warn(f"{dst.name} (for TensorRT) reaches cosine {cos.min():.5f} against {src.name} on held-out frames "
                      f"(below {FP16_MIN_COSINE}); conversion: {moved}")
    return {"file": dst.name, "against": src.name, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "conversion": moved}


"""The vision ONNX in fp16 for TensorRT (onnx_fp16.py), each copy checked against the fp32 file it comes from with
ONNX Runtime on the held-out images: what calibration.json's tensorrt_fp16 records."""

import tempfile
import warnings
from pathlib import Path

import numpy as np

from vila_edge.formats import (
    PROJECTOR_FP16_FILE,
    PROJECTOR_FP32_FILE,
    VISION_FP16_FILE,
    VISION_FP32_FILE,
    VISION_W8A8_FILE,
    VISION_W8A8_FP16_FILE,
)

from .attention_onnx import attention_fp16
from .onnx_checks import cosine, unfused_session
from .onnx_fp16 import convert_file

# calibration.json's tensorrt_fp16 entries: (the TensorRT file, the fp32 file it is converted from and checked against)
TENSORRT_FP16 = {"w8a8_fp16_vs_w8a8": (VISION_W8A8_FP16_FILE, VISION_W8A8_FILE),
                 "fp16_vs_fp32": (VISION_FP16_FILE, VISION_FP32_FILE)}
PROJECTOR_FP16 = {"projector_fp16_vs_fp32": (PROJECTOR_FP16_FILE, PROJECTOR_FP32_FILE)}  # multi-scale towers
FP16_MIN_COSINE = {VISION_W8A8_FP16_FILE: 0.99, VISION_FP16_FILE: 0.999, PROJECTOR_FP16_FILE: 0.999}  # below: a warning
ORT_CHECK = ("ONNX Runtime's CPU provider with graph optimizations off for both files (Q/DQ run as float ops, not fused "
             "int8 kernels). It has fp16 kernels for few ops and runs the others (ort_ran_in_fp32) in fp32 through casts it "
             "inserts, so this checks the conversion and its fp16 weights, scales and constants, not fp16 arithmetic")


def ort_fp32_ops(ran) -> list[str]:
    """The op types ONNX Runtime computed in float32 in the graph it ran (`ran`, saved by the session): Casts aside,
    those reading a float32 tensor."""
    from onnx import TensorProto, shape_inference

    inferred = shape_inference.infer_shapes(ran).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.input, *inferred.value_info)}
    types.update({i.name: i.data_type for i in ran.graph.initializer})
    return sorted({n.op_type for n in ran.graph.node
                   if n.op_type != "Cast" and any(types.get(i) == TensorProto.FLOAT for i in n.input)})


def fp16_agreement(fp16: Path, fp32: Path, inputs: np.ndarray, batch: int, threads: int | None = None) -> dict:
    """Cosine of the fp16 file's outputs against the fp32 file's on `inputs`, and what ORT ran in fp32."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        ran = Path(tmp) / "ran.onnx"
        sessions = unfused_session(fp16, threads, ran), unfused_session(fp32, threads)
        fp32_ops = ort_fp32_ops(onnx.load(ran, load_external_data=False))
    fp16_out, fp32_out = (_ort_run(s, batch)(inputs) for s in sessions)
    cos = cosine(fp16_out, fp32_out)
    return {"file": fp16.name, "against": fp32.name, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "ort_ran_in_fp32": fp32_ops}


def tensorrt_fp16(src: Path, dst: Path, inputs: np.ndarray, batch: int = 1, threads: int | None = None) -> dict:
    """dst: src converted to fp16 for TensorRT; returns how far dst is from src on `inputs`, and what the conversion moved."""
    moved = convert_file(src, dst)
    check = {**fp16_agreement(dst, src, inputs, batch, threads), "conversion": moved}
    least = FP16_MIN_COSINE.get(dst.name, max(FP16_MIN_COSINE.values()))
    if check["cosine_min"] < least:
        warnings.warn(f"{dst.name} (for TensorRT) reaches cosine {check['cosine_min']:.5f} against {src.name} on held-out "
                      f"images (below {least}): values fp16 cannot hold? conversion: {moved}")
    return check


def fp16_copies(out_dir: Path, smoothed, held_pixels: np.ndarray, batch: int, threads: int | None) -> dict:
    """The fp16 files TensorRT builds, each checked against the fp32 file it comes from (calibration.json's
    tensorrt_fp16)."""
    trt = {key: tensorrt_fp16(out_dir / src, out_dir / dst, held_pixels, batch, threads)
           for key, (dst, src) in TENSORRT_FP16.items()}
    if smoothed.question_ids is not None:
        trt["attention_fp16_vs_fp32"] = attention_fp16(out_dir, smoothed.projector_inputs, smoothed.question_ids,
                                                       batch, threads)
    elif smoothed.projector_inputs is not None:
        trt |= {key: tensorrt_fp16(out_dir / src, out_dir / dst, smoothed.projector_inputs, batch, threads)
                for key, (dst, src) in PROJECTOR_FP16.items()}
    return trt




def _ort_run(sess, batch: int):
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([sess.run([out], {name: np.ascontiguousarray(x[i : i + batch], dtype=np.float32)})[0]
                               for i in range(0, len(x), batch)])

    return run

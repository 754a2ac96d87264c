"""What the vision export checks its ONNX files with: per-sample cosine similarity, and an ONNX Runtime CPU session
without graph optimizations (the fp16 copies for TensorRT are compared on it: no fused kernel hides a conversion)."""

from pathlib import Path

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two [N, ...] arrays."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def unfused_session(path: Path, threads: int | None, save_as: Path | None = None):
    """An ORT CPU session without graph optimizations; save_as: where ORT writes the graph it runs (casts included)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if save_as is not None:
        opts.optimized_model_filepath = str(save_as)
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{save_as.name}.data")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

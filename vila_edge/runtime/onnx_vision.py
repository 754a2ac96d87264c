"""The vision path on a CPU: the exported tower + projector ONNX (fp32 or W8A8 QDQ) through ONNX Runtime; for a
multi-scale (S2 / NVILA) tower, the tower and the projector graphs apart; for LLaMA-VID, the tower and its attention
graph (features + the question's ids -> frame tokens). Imports neither torch nor transformers."""

from pathlib import Path

import numpy as np

from ..errors import CheckpointError, UnsupportedError

INPUT, OUTPUT = "pixel_values", "image_embeds"
FEATURES = "image_features"  # a multi-scale tower's output and its projector's input (LLaMA-VID: its attention's)
QUESTION_IDS, FRAME_TOKENS = "question_ids", "frame_tokens"  # LLaMA-VID's attention graph (export/attention_onnx.py)


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UnsupportedError("the onnx vision backend needs ONNX Runtime: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({e}); re-run vila-edge quantize") from None


class OnnxVision:
    """One vision graph: pixels [N, 3, S, S] float32 -> image_embeds [N, T, H] (tower + projector) or image_features
    [N, P, C] (a multi-scale tower), or image_features -> image_embeds (its projector); float32."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: missing; quantize with --vision w8a8 to export the vision ONNX")
        self.session = session(self.path, threads)
        self.input, self.output = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]


class OnnxAttention:
    """LLaMA-VID's attention graph (export/attention_onnx.py): tower features [N, P+1, C] float32 and the question's
    Q-Former ids [L] -> frame tokens [N, T, H] float32."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: missing; quantize LLaMA-VID with --vision w8a8 to export its attention "
                                  "ONNX beside the tower's")
        self.session = session(self.path, threads)

    def __call__(self, features: np.ndarray, question_ids: np.ndarray) -> np.ndarray:
        feeds = {FEATURES: np.ascontiguousarray(features, dtype=np.float32),
                 QUESTION_IDS: np.asarray(question_ids, dtype=np.int64).reshape(1, -1)}
        return self.session.run([FRAME_TOKENS], feeds)[0]


def onnx_vision(folder: Path, spec: dict, threads: int | None = None):
    """(the vision graph, the graph after it: a multi-scale tower's projector, LLaMA-VID's attention, or None) of an
    engine manifest's vision entry, files under `folder`."""
    projector, attention = spec.get("projector_file"), spec.get("attention_file")
    if attention:
        return OnnxVision(folder / spec["file"], threads), OnnxAttention(folder / attention, threads)
    return OnnxVision(folder / spec["file"], threads), projector and OnnxVision(folder / projector, threads)

"""The vision path on a CPU: the exported tower + projector ONNX (fp32 or W8A8 QDQ) through ONNX Runtime.
Imports neither torch nor transformers."""

from pathlib import Path

import numpy as np

from ..errors import CheckpointError, UnsupportedError

INPUT, OUTPUT = "pixel_values", "image_embeds"


def session(path: str | Path, threads: int | None = None, extra_outputs: bytes | None = None):
    """An ONNX Runtime CPU session; `extra_outputs` (a serialized model) replaces the file when given."""
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
        return ort.InferenceSession(extra_outputs or str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({e}); re-run vila-edge quantize") from None


class OnnxVision:
    """pixels [N, 3, S, S] float32 -> image_embeds [N, T, H] float32."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: missing; quantize with --vision w8a8 to export the vision ONNX")
        self.session = session(self.path, threads)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(pixels, dtype=np.float32)})[0]

"""The vision path on a CPU: the exported tower + projector ONNX (fp32 or W8A8 QDQ) through ONNX Runtime; for a
multi-scale (S2 / NVILA) tower, the tower and the projector graphs apart. Imports neither torch nor transformers."""

from pathlib import Path

import numpy as np

from ..errors import CheckpointError, UnsupportedError

INPUT, OUTPUT = "pixel_values", "image_embeds"
FEATURES = "image_features"  # a multi-scale tower's output and its projector's input


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


def onnx_vision(folder: Path, spec: dict, threads: int | None = None) -> tuple[OnnxVision, OnnxVision | None]:
    """(the vision graph, the projector graph or None) of an engine manifest's vision entry, files under `folder`."""
    projector = spec.get("projector_file")
    return OnnxVision(folder / spec["file"], threads), projector and OnnxVision(folder / projector, threads)

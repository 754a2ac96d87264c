"""Engine builders, installed as vila_edge.export: the vision ONNX (fp32 and W8A8 QDQ), later TensorRT."""

"""Engine and ONNX writers, installed as vila_edge.export: the cpu engine, the TensorRT-LLM checkpoint and GPU
bundles, the vision ONNX (fp32 and W8A8 Q/DQ) and its TensorRT plan."""

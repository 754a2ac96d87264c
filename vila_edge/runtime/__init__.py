"""The backends that run engine folders: the C++ cpu engine and TensorRT, with the manifest, the engine
tokenizer and ONNX Runtime vision they share (no torch)."""

"""Quantization maths and search: AWQ (scale + clip) on the LLM, calibration data, SmoothQuant and int8 Q/DQ for
the vision tower, perplexity. The options and their defaults are in options.py."""

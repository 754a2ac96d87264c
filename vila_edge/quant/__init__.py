"""Quantization: int4 group maths and packing (int4.py); the AWQ search lands with `vila-edge quantize`."""

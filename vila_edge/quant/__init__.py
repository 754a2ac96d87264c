"""Quantization: int4 group maths and packing (int4.py), AWQ scale groups (mappings.py); the search lands with `vila-edge quantize`."""

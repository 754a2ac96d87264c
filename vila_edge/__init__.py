"""vila_edge: VILA-family vision-language models on Jetson Orin and laptops."""

__version__ = "0.1.0"

IMAGE_TOKEN_INDEX = -200  # VILA's placeholder id for an image block in a token sequence
IMAGE_TOKEN = "<image>"

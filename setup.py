from setuptools import find_packages, setup

# Code outside vila_edge/ is installed under the vila_edge namespace: export/ as vila_edge.export.
setup(
    name="vila-edge",
    version="0.1.0",
    description="Edge deployment of VILA-family vision-language models",
    python_requires=">=3.10",
    packages=find_packages(include=["vila_edge", "vila_edge.*"]) + ["vila_edge.export"],
    package_dir={"vila_edge.export": "export"},
    install_requires=[
        "torch==2.13.0",  # a CPU build lies on disk; an unpinned torch pulls several GB of CUDA
        "transformers==5.23.0",
        "tokenizers>=0.22",
        "safetensors>=0.4",
        "sentencepiece>=0.2",  # Llama tokenizer.model files
        "protobuf>=4",
        "numpy>=1.26",
        "pillow>=10",
        "opencv-python-headless>=4.8",
        "jinja2>=3.1",
        "tqdm>=4.66",
        "gguf>=0.10",  # demo checkpoint: SmolLM2 ships as a GGUF
        "accelerate>=1.0",  # transformers needs it to load a GGUF
        "onnx==1.23.2",  # the vision tower's ONNX (fp32 and W8A8 QDQ)
        "onnxruntime==1.31.1",  # runs it on the CPU
    ],
    extras_require={"test": ["pytest>=8"]},
    entry_points={"console_scripts": ["vila-edge=vila_edge.cli:main"]},
)

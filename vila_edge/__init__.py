"""vila_edge: VILA-family vision-language models on Jetson Orin and laptops.

Modules are layered, and imports point down only (tests/test_layers.py checks every import, those
inside functions included). Modules of one layer may import each other without a cycle; the cpu
and trt paths never import each other.

    base          errors, atomic, timing, formats (file names, format ids, suffixes), safetensors_header, pickle_header,
                  _runtime (C++)
    facts         arch (every per-architecture fact), targets, device, plan (the memory model), tiling (tile grids,
                  multi-scale merges)
    load          checkpoint, config_checks, hf_format (HF-format NVILA -> VILA layout names and configs), llava_format
                  (LLaVA-1.5 folders read in place), part_weights, int4 (group quantizer, AutoAWQ GEMM layout), awq_checkpoint,
                  llm_awq (llm-awq's real-quant dumps of the VILA1.5-*-AWQ repos, repacked), llamavid_format (LLaMA-VID
                  folders read in place), weight_checks
    front, model  conversation, prompt, question, media, video (frames at a rate, streamed), feature_cache (per-frame
                  features on disk), scenes, corpus, generate, backend, caption; model/ (torch reference)
    quant         quant/: AWQ search, calibration data, SmoothQuant, int8 Q/DQ, perplexity
    export, run   export/ (vila_edge.export: writers of engines and ONNX), runtime/ (cpu and trt backends)
    live, measure capture, record, bench, bandwidth, bench_table
    serve         serve/ (the OpenAI-compatible HTTP server over one loaded model)
    commands      commands/ (one orchestrator per command), demo, synthetic
    cli           cli/ (one parser per command)
"""

__version__ = "0.1.0"

IMAGE_TOKEN_INDEX = -200  # VILA's placeholder id for an image block in a token sequence
IMAGE_TOKEN = "<image>"

# (layer, the modules and packages in it), bottom first: the order the docstring above gives.
LAYERS = (
    ("base", ("vila_edge", "errors", "atomic", "timing", "formats", "safetensors_header", "pickle_header", "_runtime")),
    ("facts", ("arch", "targets", "device", "plan", "tiling")),
    ("load", ("checkpoint", "config_checks", "hf_format", "llava_format", "llamavid_format", "weight_checks",
              "part_weights", "int4", "awq_checkpoint", "llm_awq")),
    ("front, model", ("conversation", "prompt", "question", "media", "video", "feature_cache", "scenes", "corpus",
                      "generate", "backend", "caption", "model")),
    ("quant", ("quant",)),
    ("export, run", ("export", "runtime")),
    ("live, measure", ("capture", "record", "bench", "bandwidth", "bench_table")),
    ("serve", ("serve",)),
    ("commands", ("commands", "demo", "synthetic")),
    ("cli", ("cli",)),
)
# Pairs of module prefixes that never import each other in either direction: one backend, or one
# target's exporter, does not lean on another's.
INDEPENDENT = (
    ("runtime.cpu", "runtime.trt"),
    ("export.cpu_engine", "export.trt"),
)

"""Every on-disk contract in one place: file names, format ids and versions, and the media suffixes.

A reader checks the id (and version) it finds against these and refuses anything else with the
command that rewrites the file; the layouts themselves are documented where they are written
(`awq_checkpoint.py`, `export/cpu_engine.py`, `export/trtllm_checkpoint.py`, `runtime/manifest.py`).
"""

from pathlib import Path

from .errors import CheckpointError

# ---- media a user passes in ---------------------------------------------------------------------------
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
TEXT_SUFFIXES = (".txt", ".jsonl", ".md")  # calibration and perplexity text
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")  # weights read only with --allow-pickle

# ---- the checkpoint (VILA layout, in and out of `quantize`) ------------------------------------------
CHECKPOINT_PARTS = ("llm", "vision_tower", "mm_projector")
AWQ_RESULTS_FILE = "awq_results.safetensors"  # searched scales and clips, re-packable into any layout
AWQ_RESULTS_FORMAT = "vila_edge.awq_results/1"
QUANT_REPORT_FILE = "quant_report.json"
# llm-awq's real-quant dump, as TinyChat names it (the VILA1.5-*-AWQ repos' llm/vila-1.5-3b-w4-g128-awq-v2.pt); bits
# and group size are in the name only. -v2: the packing `vila-edge quantize` imports (llm_awq.py)
LLM_AWQ_DUMP = r"-w(?P<bits>\d+)-g(?P<group>\d+)-awq(?P<v2>-v2)?\.pt$"
VISION_DIR = "vision"  # the tower + projector as ONNX, beside llm/
VISION_FP32_FILE = "vision_fp32.onnx"
VISION_W8A8_FILE = "vision_w8a8.onnx"
VISION_W8A8_DYNAMIC_FILE = "vision_w8a8_dynamic.onnx"  # the cpu path's per-token dynamic int8 (quant/dynamic_int8.py)
VISION_FILES = {"w8a8": VISION_W8A8_FILE, "w8a8-dynamic": VISION_W8A8_DYNAMIC_FILE, "fp32": VISION_FP32_FILE}  # what ONNX Runtime runs (cpu engines, --backend onnx)
# what TensorRT builds: the same graphs with fp16 float parts and Q/DQ scales (export/onnx_fp16.py), beside their sources
VISION_W8A8_FP16_FILE = "vision_w8a8_fp16.onnx"
VISION_FP16_FILE = "vision_fp16.onnx"
VISION_FP16_FILES = {"w8a8_fp16": VISION_W8A8_FP16_FILE, "fp16": VISION_FP16_FILE}
VISION_FP16_SOURCE = {VISION_W8A8_FP16_FILE: VISION_W8A8_FILE, VISION_FP16_FILE: VISION_FP32_FILE}
# S2 / NVILA (multi-scale) towers: the tower alone in the files above (pixels -> features of one tile) and the projector
# apart (the merged multi-scale features -> image tokens), as VILA merges scales between the two (tiling.py)
PROJECTOR_FP32_FILE, PROJECTOR_FP16_FILE = "projector_fp32.onnx", "projector_fp16.onnx"
PROJECTOR_OF = {VISION_W8A8_FILE: PROJECTOR_FP32_FILE, VISION_FP32_FILE: PROJECTOR_FP32_FILE,
                VISION_W8A8_DYNAMIC_FILE: PROJECTOR_FP32_FILE,
                VISION_W8A8_FP16_FILE: PROJECTOR_FP16_FILE, VISION_FP16_FILE: PROJECTOR_FP16_FILE}
# LLaMA-VID: the tower alone in the files above (pixels -> features, class token kept), its attention part apart
# (features + the question's Q-Former ids -> frame tokens; export/attention_onnx.py), float beside either tower file
ATTENTION_FP32_FILE, ATTENTION_FP16_FILE = "attention_fp32.onnx", "attention_fp16.onnx"
ATTENTION_OF = {VISION_W8A8_FILE: ATTENTION_FP32_FILE, VISION_FP32_FILE: ATTENTION_FP32_FILE,
                VISION_W8A8_DYNAMIC_FILE: ATTENTION_FP32_FILE,
                VISION_W8A8_FP16_FILE: ATTENTION_FP16_FILE, VISION_FP16_FILE: ATTENTION_FP16_FILE}
VISION_RECORD_FILE = "calibration.json"
# a cpu engine's tower on our own kernels (export/vision_native.py): the encoder layers of the per-token dynamic graph,
# and that graph's two ends apart for ONNX Runtime (pixels -> the first layer's input; the last layer's output -> out)
VISION_NATIVE_FILE, VISION_NATIVE_LAYOUT = "vision_native.safetensors", "vit-w8a8-dynamic/1"
VISION_EMBED_FILE, VISION_HEAD_FILE = "vision_embed.onnx", "vision_head.onnx"
VISION_BACKENDS = ("native", "ort")  # what runs a cpu engine's tower: our kernels (where built), or ONNX Runtime


def cpu_vision(vision_dir: Path) -> str:
    """The W8A8 kind ONNX Runtime runs by default (cpu engines, --backend onnx): the per-token dynamic graph, which holds
    on trained towers, where quantize wrote one (older quantized folders have only the static one), else the static one."""
    return "w8a8-dynamic" if (vision_dir / VISION_W8A8_DYNAMIC_FILE).is_file() else "w8a8"
VISION_RECORD_FORMAT = "vila_edge.vision_w8a8/1"

# ---- engine folders (`build-engine`) -------------------------------------------------------------------
MANIFEST_FILE = "manifest.json"
ENGINE_FORMAT, ENGINE_FORMAT_VERSION = "vila-edge-engine", 1
ENGINE_TOKENIZER_DIR = "tokenizer"
QUESTION_TOKENIZER_DIR = "question_tokenizer"  # LLaMA-VID: the Q-Former's BERT vocab (question.py), from vlm_att/
BUILD_SCRIPT = "build.sh"  # in a GPU bundle: builds the engine on the device
CPU_LLM_FILE = "llm.safetensors"
CPU_LAYOUT = "q4-pair64/1"  # int4 pairs of 32 per byte (export/cpu_engine.py); in the manifest and the file
TRTLLM_CHECKPOINT_DIR, TRTLLM_ENGINE_DIR, RECIPE_FILE = "trtllm_checkpoint", "llm", "recipe.json"
TRTLLM_CONFIG_FILE, TRTLLM_WEIGHTS_FILE = "config.json", "rank0.safetensors"
VISION_PLAN_FILE, VISION_CACHE_FILE = "vision/vision.plan", "vision/timing.cache"
PROJECTOR_PLAN_FILE = "vision/projector.plan"  # multi-scale towers' projector, built with the vision plan's timing cache
ATTENTION_PLAN_FILE = "vision/attention.plan"  # LLaMA-VID's attention graph (fp16), built with the same timing cache
TRTLLM_CACHE_FILE = "model.cache"  # trtllm-build's timing cache: in the engine's llm/ and the device cache folder
VISION_DEVICE_CACHE_FILE = "vision.cache"  # the vision plan's timing cache, in the device cache folder

# ---- caches (feature_cache.py): per-frame vision features of videos, content-addressed --------------------
FEATURE_CACHE_FORMAT = "vila_edge.feature_cache/1"  # an entry's manifest.json: chunks with their sha256 and shape
FEATURE_DIGESTS_FILE = "digests.json"  # in the cache root: video sha256 by (resolved path, size, mtime_ns)

# ---- results ---------------------------------------------------------------------------------------------
BENCH_FORMAT, BENCH_FORMAT_VERSION = "vila-edge-bench", 1


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def check_layout(path: Path, metadata: dict | None, expected: str, rebuild: str) -> None:
    """Refuses a weight file whose safetensors metadata names another layout than this runtime reads."""
    found = (metadata or {}).get("layout")
    if found != expected:
        raise CheckpointError(f"{path}: weight layout {found!r}, this runtime reads {expected!r}; {rebuild}")

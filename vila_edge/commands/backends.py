"""Which backend runs a model folder, opened with the user's options: an engine folder runs on the backend its
manifest names (cpu or trt), a checkpoint on the torch reference. Torch is imported only for a checkpoint."""

import json
from dataclasses import dataclass
from pathlib import Path

from ..backend import Backend
from ..errors import UsageError, require_extra
from ..formats import ATTENTION_OF, MANIFEST_FILE, PROJECTOR_OF, VISION_DIR, VISION_FILES, cpu_vision
from ..runtime.manifest import is_engine
from ..targets import TARGETS

BACKENDS = ("auto", "torch", "onnx", "cpu", "trt")


@dataclass(frozen=True)
class BackendOptions:
    backend: str = "auto"
    threads: int | None = None  # cpu engine
    kernels: str | None = None  # cpu engine
    max_seq: int | None = None  # cpu engine
    activations: str = "int8"  # cpu engine
    kv_cache: str | None = None  # cpu engine: the KV cache's storage (None: fp16)
    vision_backend: str | None = None  # cpu engine: "native" or "ort" (None: native where the engine has it)
    device: str = "auto"  # torch
    dtype: str = "auto"  # torch
    projector_order: str | None = None  # torch
    allow_pickle: bool = False  # torch
    vision_tower: str | None = None  # torch: a LLaVA-1.5 folder's CLIP tower
    hf_processor: bool = False  # torch: a LLaVA-1.5 folder with llava-hf's processor and template
    qformer_tokenizer: str | None = None  # torch: a LLaMA-VID folder's bert-base-uncased
    max_tiles: int | None = None  # NVILA: tiles per image at most (default: the checkpoint's max_tiles; 1: one tile)


def engine_backend(folder) -> str:
    """"cpu" or "trt": which backend runs an engine folder, by the target in its manifest."""
    try:
        target = json.loads((Path(folder) / MANIFEST_FILE).read_text()).get("target")
    except (OSError, ValueError, AttributeError):
        return "cpu"  # CpuEngine's manifest check says what is wrong
    return "cpu" if target == "cpu" or target not in TARGETS else "trt"


def open_engine(folder, opts: BackendOptions) -> tuple[Backend, str]:
    """(the engine's backend, its description) for an engine folder."""
    kind = engine_backend(folder)
    if opts.backend not in ("auto", kind):
        raise UsageError(f"{folder} is a {kind} engine, run by --backend {kind}; drop --backend {opts.backend}")
    if kind == "trt":
        from ..runtime.trt import TrtEngine

        if opts.threads or opts.kernels or opts.kv_cache or opts.vision_backend:
            raise UsageError(f"{folder} is a TensorRT engine; --threads and --kernels set the cpu engine, as do "
                             "--kv-cache and --vision-backend: drop them")
        engine = TrtEngine(folder)
        return engine, f"trt ({engine.manifest['target']})"
    from ..runtime.cpu import CpuEngine

    engine = CpuEngine(folder, threads=opts.threads, kernels=opts.kernels, max_seq=opts.max_seq,
                       activations=opts.activations, kv_cache=opts.kv_cache, vision_backend=opts.vision_backend)
    vision = f", vision {engine.vision_backend}" if engine.vision_backend else ""
    return engine, f"cpu ({engine.kernels}, {engine.threads} threads{vision})"


def load_backend(folder, opts: BackendOptions) -> tuple[Backend, str]:
    """(the backend, its name): an engine folder, or a checkpoint on torch (vision on the W8A8 ONNX with onnx)."""
    if is_engine(folder):
        return open_engine(folder, opts)
    if opts.backend in ("cpu", "trt"):
        raise UsageError(f"{folder}: --backend {opts.backend} runs engine folders; build one with vila-edge build-engine")
    require_extra("quantize", f"{folder} is a checkpoint: captioning it on the torch reference",
                  "caption an engine folder from build-engine (no torch)")
    from ..checkpoint import load_checkpoint
    from ..model.vlm import VilaModel

    ckpt = load_checkpoint(folder, opts.allow_pickle, opts.vision_tower, opts.hf_processor,
                           qformer_tokenizer=opts.qformer_tokenizer)
    vision = projector = None
    if opts.backend == "onnx":  # the exported tower + projector: its token order is baked in
        from ..runtime.onnx_vision import OnnxVision

        if opts.projector_order:
            raise UsageError("--projector-order cannot change an exported vision ONNX; use --backend torch")
        name = VISION_FILES[cpu_vision(ckpt.root / VISION_DIR)]  # the cpu engine's default graph
        vision = OnnxVision(ckpt.root / VISION_DIR / name)
        if ckpt.llamavid is not None:  # LLaMA-VID: the tower alone, then its attention graph (features + question ids)
            from ..runtime.onnx_vision import OnnxAttention

            projector = OnnxAttention(ckpt.root / VISION_DIR / ATTENTION_OF[name])
        elif ckpt.vision_layout.channel_copies > 1:  # S2 / NVILA: the projector apart
            projector = OnnxVision(ckpt.root / VISION_DIR / PROJECTOR_OF[name])
    model = VilaModel(ckpt, device=opts.device, dtype=opts.dtype, projector_order=opts.projector_order, vision=vision,
                      projector=projector)
    return model, "torch" if opts.backend == "auto" else opts.backend

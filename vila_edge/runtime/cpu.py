"""The cpu backend: an engine folder from `build-engine --target cpu`, run by the C++ engine
(vila_edge._runtime) with vision through ONNX Runtime. Imports neither torch nor transformers."""

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, UsageError
from ..formats import CPU_LAYOUT, VISION_BACKENDS, check_layout
from ..prompt import splice_parts
from ..safetensors_header import read_header_and_metadata
from ..tiling import encode_multiscale
from .manifest import EngineInfo, read_manifest


def rope_frequencies(llm: dict) -> tuple[np.ndarray, float]:
    """(inv_freq [head_dim / 2] float32, attention scale) as transformers computes them for the rope type."""
    rope, dim = llm["rope"], llm["head_dim"]
    # theta ** (i / dim) correctly rounded to float32, as torch's powf gives it; numpy's float32 pow is off by an
    # ulp on some CPUs (its SIMD path differs between AVX2 and AVX-512 builds).
    exponent = (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)).astype(np.float64)
    inv = np.float32(1.0) / (np.float64(np.float32(rope["rope_theta"])) ** exponent).astype(np.float32)
    kind = rope["rope_type"]
    if kind == "linear":
        inv = inv / np.float32(rope["factor"])
    elif kind == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = np.where(medium, smoothed, scaled)
    elif kind != "default":
        raise CheckpointError(f"rope type {kind!r} is not supported by the cpu engine")
    return inv.astype(np.float32), 1.0


# The KV cache's storage types and their bytes per cached value (int8: one fp16 scale per 32 values beside them).
KV_CACHE_BYTES = {"fp16": 2.0, "int8": 1 + 2 / 32, "fp32": 4.0}
DEFAULT_KV_CACHE = "fp16"


def kv_cache_bytes(llm: dict, positions: int, kv_cache: str = DEFAULT_KV_CACHE) -> float:
    """Bytes K and V take at `positions` cached positions: layers x kv_heads x positions x head_dim x 2 x bytes."""
    return llm["layers"] * llm["kv_heads"] * positions * llm["head_dim"] * 2 * KV_CACHE_BYTES[kv_cache]


def default_threads() -> int:
    """Cores this process may use, at most 8: decode is bandwidth-bound well before that on laptops."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def open_llm(path: Path, llm: dict, max_seq: int, threads: int, kernels: str = "", int8_activations: bool = True,
             kv_cache: str = DEFAULT_KV_CACHE):
    """The C++ engine over an engine weight file, for the LLM shapes of a manifest's `llm`; its KV cache stored as
    kv_cache (fp16, int8 or fp32), allocated for the positions in use and grown on demand up to max_seq."""
    try:
        from .. import _runtime
    except ImportError as e:
        raise CheckpointError(f"the C++ runtime is not built ({e}); reinstall vila-edge: pip install -e .") from None

    header, metadata = read_header_and_metadata(path)  # refuses a truncated file with a message
    check_layout(path, metadata, CPU_LAYOUT, f"rebuild it: vila-edge build-engine QUANTIZED -o {path.parent} --target cpu")
    with open(path, "rb") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
    index = {k: (v["dtype"], v["shape"], *v["data_offsets"]) for k, v in header.items()}
    config = _runtime.ModelConfig()
    for key in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "rms_eps"):
        setattr(config, key, llm[key])
    inv_freq, config.rope_attention_scale = rope_frequencies(llm)
    config.inv_freq = inv_freq.tolist()
    if kernels and kernels not in _runtime.supported_kernels():
        raise UsageError(f"--kernels {kernels}: this CPU runs {', '.join(_runtime.supported_kernels())}")
    if kv_cache not in KV_CACHE_BYTES:
        raise UsageError(f"--kv-cache {kv_cache}: choose {', '.join(KV_CACHE_BYTES)}")
    if kv_cache == "int8" and llm["head_dim"] % 32:
        raise UsageError(f"--kv-cache int8 needs a head_dim that is a multiple of 32 (this model's is {llm['head_dim']}); "
                         "use --kv-cache fp16")
    try:
        return _runtime.Engine(str(path), data_start, index, config, max_seq, threads, kernels, int8_activations, kv_cache)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}; rebuild the engine") from None


def shared_prefix(a: list, b: list) -> int:
    """How many leading items a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def native_is_faster(native: dict | None, kernels: str) -> bool:
    """The default vision backend: our kernels where build-engine wrote them and timed them faster than ONNX Runtime
    (engines built before it timed both: where this CPU's table has an int8 GEMM of its own; the portable one, NEON's
    for now, is slower than ONNX Runtime's)."""
    from .. import _runtime

    if not native or _runtime.kernel_sources(kernels)["i8_gemm"] == "ref":
        return False
    ms = native.get("probe_ms")
    return ms is None or ms["native"] <= ms["ort"]


class CpuEngine:
    """Prompt ids and images in, logits out: the backend interface of generate(), plus the vision and splice."""

    def __init__(self, root: str | Path, threads: int | None = None, kernels: str | None = None, max_seq: int | None = None,
                 activations: str = "int8", kv_cache: str | None = None, prefix_reuse: bool = True,
                 vision_backend: str | None = None):
        self.root = Path(root)
        # a new sequence keeps the cached positions its inputs begin with (live captioning repeats the system prompt
        # and the text before the image every frame); the rest is prefilled. Off: every prefill from position 0
        self.prefix_reuse = prefix_reuse
        self.reused_positions = 0  # how many the last prefill kept
        self._row_keys: list[bytes] = []  # a digest of each prefilled position's input row, from position 0
        self._new_sequence = True
        self.manifest = read_manifest(self.root, "cpu")
        self.info = EngineInfo(self.root, self.manifest)
        llm = self.manifest["llm"]
        if llm.get("layout") != CPU_LAYOUT:
            raise CheckpointError(
                f"{self.root}: weight layout {llm.get('layout')!r}, this runtime reads {CPU_LAYOUT!r}; "
                f"rebuild it: vila-edge build-engine QUANTIZED -o {self.root} --target cpu"
            )
        self.max_seq = max_seq or self.info.model_max_length
        self.threads = threads or default_threads()
        self.kv_cache = kv_cache or DEFAULT_KV_CACHE
        self.llm = open_llm(self.root / llm["file"], llm, self.max_seq, self.threads, kernels or "", activations == "int8",
                            self.kv_cache)
        from .. import _runtime  # open_llm has imported it

        self.gemm_rows = _runtime.PANEL_ROWS
        self.tokenizer, self.image_end_ids = self.info.load_tokenizer()
        self.vision = self.projector = self.attention = None
        self.vision_backend = None  # "native" (our kernels) or "ort" (ONNX Runtime)
        if self.manifest.get("vision"):
            self._open_vision(self.manifest["vision"], vision_backend, kernels or "")

    def _open_vision(self, spec: dict, backend: str | None, kernels: str) -> None:
        """The tower on `backend`, by default on our kernels where they were timed faster (native_is_faster)."""
        from .onnx_vision import OnnxVision, onnx_vision

        if backend not in (None, *VISION_BACKENDS):
            raise UsageError(f"--vision-backend {backend}: choose {' or '.join(VISION_BACKENDS)}")
        if backend == "native" and not spec.get("native"):
            raise UsageError(f"{self.root}: this engine has no native vision tower (built for the per-token dynamic W8A8 "
                             "graph of SigLIP, CLIP and DINOv2 towers); use --vision-backend ort, or rebuild the engine")
        self.vision_backend = backend or ("native" if native_is_faster(spec.get("native"), kernels) else "ort")
        if self.vision_backend == "ort":
            self.vision, self.projector = onnx_vision(self.root, spec, self.threads)
            if spec.get("attention_file"):  # LLaMA-VID: the graph after the tower is its attention
                self.attention, self.projector = self.projector, None
            return
        from .native_vision import NativeVision

        self.vision = NativeVision(self.root, spec["native"], self.threads, kernels)
        self.projector = spec.get("projector_file") and OnnxVision(self.root / spec["projector_file"], self.threads)

    @property
    def vocab_size(self) -> int:
        return self.manifest["llm"]["vocab"]

    @property
    def kernels(self) -> str:
        return self.llm.kernels

    @property
    def kv_item_bytes(self) -> float:
        """Bytes per cached K or V value in this engine's cache type (the bandwidth ceiling reads them)."""
        return KV_CACHE_BYTES[self.kv_cache]

    def encode_images(self, pixels: np.ndarray, question_ids: np.ndarray | None = None) -> np.ndarray:
        """pixels [N, 3, S, S] -> image tokens [N, T, H]; LLaMA-VID's conditioned on the question's ids [L]."""
        if self.info.family.question_conditioned:
            return self.frame_tokens(self.tower_features(pixels), question_ids)
        return self.info.require_vision(self.vision)(pixels)

    def tower_features(self, pixels: np.ndarray) -> np.ndarray:
        """LLaMA-VID: pixels [N, 3, S, S] -> the tower's features [N, P+1, C] (the tower graph alone)."""
        return self.info.require_vision(self.vision)(pixels)

    def frame_tokens(self, features: np.ndarray, question_ids: np.ndarray) -> np.ndarray:
        """LLaMA-VID: features [N, P+1, C] + the question's Q-Former ids [L] -> frame tokens [N, T, H] (its attention graph)."""
        return self.info.require_attention(self.attention)(features, question_ids)

    def encode_multiscale(self, layout, images) -> list[np.ndarray]:
        return encode_multiscale(layout, images, self.info.require_vision(self.vision), self.info.require_projector(self.projector))

    def embed(self, ids: list[int]) -> np.ndarray:
        return self.llm.embed(np.asarray(ids, dtype=np.int32))

    def splice(self, ids: list[int], image_embeds: np.ndarray | None) -> np.ndarray:
        """Prompt ids with image markers + [N, T, H] image blocks -> inputs_embeds [L, H]."""
        return np.concatenate(splice_parts(ids, image_embeds, self.embed, self.image_end_ids)).astype(np.float32, copy=False)

    def reset(self) -> None:
        """Start a new sequence: the next prefill begins at position 0, reusing what the cache shares with it."""
        self._new_sequence = True

    def trim(self, n: int) -> None:
        """Keep the first n cached positions (a shared prompt prefix), drop the rest."""
        self.llm.trim(n)
        del self._row_keys[n:]

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        if not self.prefix_reuse:  # nothing to digest (bench times this prefill) nor to keep
            self._row_keys.clear()
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in embeds] if self.prefix_reuse else []
        start = 0
        if self._new_sequence:
            keep = shared_prefix(self._row_keys, keys)
            # at least PANEL_ROWS rows are run again (the last one's logits are the answer's first): a prefill of fewer
            # takes the decode kernels, whose rounding differs from the GEMM's that computed the kept rows
            keep = max(0, min(keep, len(embeds) - self.gemm_rows))
            self.trim(keep)
            self.reused_positions, self._new_sequence, start = keep, False, keep
        self._room(len(embeds) - start)
        # rows after decoded positions are not a prefix of anything
        tracked = self.prefix_reuse and len(self._row_keys) == self.llm.position
        logits = self.llm.prefill(embeds[start:])
        if tracked:  # only once they are in the cache
            self._row_keys += keys[start:]
        return logits

    def decode(self, token_id: int) -> np.ndarray:
        if self._new_sequence:
            raise UsageError("decode before prefill: a new sequence starts with its prompt")
        self._room(1)
        return self.llm.decode(int(token_id))

    def _room(self, n: int) -> None:
        if self.llm.position + n > self.max_seq:
            raise UsageError(f"the prompt and answer need {self.llm.position + n} positions; this engine's cache holds "
                             f"{self.max_seq} (--max-seq)")

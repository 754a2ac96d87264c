"""The trt backend: an engine folder from `build-engine --target orin|orin-nano|rtx4090|a100|h100`,
built on the GPU that runs it. Vision through the TensorRT plan (named tensors, execute_async_v3),
the LLM through TensorRT-LLM's runner with the image embeddings as a prompt table.

TensorRT engines run only where they were built: the same GPU architecture (SM) and the same
TensorRT and TensorRT-LLM versions. The manifest records them; `check_engine` refuses the rest."""

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..device import TEGRA_RELEASE, jetpack_release, l4t_release
from ..errors import CheckpointError, UnsupportedError, UsageError
from ..prompt import splice_parts
from ..targets import DESKTOP_STACK, GPU_TARGETS, JETSON_STACK, TARGETS
from ..tiling import encode_multiscale
from .manifest import EngineInfo, read_manifest
from .onnx_vision import FEATURES, QUESTION_IDS

LIBRARIES = {"tensorrt": "TensorRT", "tensorrt_llm": "TensorRT-LLM"}
DEVICE = "cuda"  # where tensors for TensorRT go (the CPU tests run the calls against stand-ins on "cpu")


def install_hint(jetson: bool) -> str:
    return (JETSON_STACK if jetson else DESKTOP_STACK).install


# ---- what this machine builds and runs -----------------------------------------------------------


def probe_environment() -> tuple[dict, list[str]]:
    """({tensorrt, tensorrt_llm, cuda, gpu, sm, l4t, jetpack} as far as present, [what is missing to build or run]).
    Library versions outside the range the code was checked against (targets.Stack) count as missing."""
    env, missing = {}, []
    jetson = TEGRA_RELEASE.is_file()
    if jetson:
        env["l4t"] = l4t_release(TEGRA_RELEASE.read_text(errors="replace"))
        env["jetpack"] = jetpack_release()
    for module in LIBRARIES:
        try:
            env[module] = importlib.import_module(module).__version__
        except Exception as e:  # ImportError, or an OSError from a library it loads
            missing.append(f"{module} does not import ({type(e).__name__}: {e})")
    missing += version_problems(env, jetson)
    missing += _probe_gpu(env, jetson)
    return env, missing


def version_problems(env: dict, jetson: bool) -> list[str]:
    """The TensorRT / TensorRT-LLM versions in `env` this code was not checked against, each with the supported range."""
    stack = JETSON_STACK if jetson else DESKTOP_STACK
    return [f"{LIBRARIES[lib]} {env[lib]} is not supported on {stack.platform}: vila-edge was checked against "
            f"{LIBRARIES[lib]} {stack.supported(lib)} (install {stack.install})"
            for lib in LIBRARIES if lib in env and not stack.accepts(lib, env[lib])]


def _probe_gpu(env: dict, jetson: bool) -> list[str]:
    try:
        import torch
    except ImportError:
        return ["torch does not import (it finds the GPU and moves tensors to it)"]
    if torch.version.cuda is None:
        cuda_torch = "NVIDIA's torch wheel for this JetPack" if jetson else "a CUDA build of torch"
        return [f"torch {torch.__version__} is a CPU-only build (on a GPU machine, a plain `pip install torch` "
                f"can replace the CUDA one); install {cuda_torch}"]
    if not torch.cuda.is_available():
        return [f"no CUDA GPU is visible (torch {torch.__version__}, CUDA {torch.version.cuda})"]
    major, minor = torch.cuda.get_device_capability(0)
    env |= {"cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0), "sm": 10 * major + minor}
    return []


def engine_mismatches(built_with: dict, env: dict) -> list[str]:
    """What differs between where an engine was built and here, in words; empty when it can run here."""
    names = {"sm": "GPU architecture", "tensorrt": "TensorRT", "tensorrt_llm": "TensorRT-LLM"}
    out = []
    for key, name in names.items():
        want, have = built_with.get(key), env.get(key)
        if want != have:
            show = (lambda v: f"sm_{v}") if key == "sm" else str  # noqa: E731
            out.append(f"{name} {show(want)} (engine) vs {show(have) if have is not None else 'none'} (here)")
    return out


def check_engine(folder: Path, manifest: dict, env: dict) -> None:
    """Refuses an engine built for another GPU architecture or library version, saying how to rebuild."""
    diffs = engine_mismatches(manifest.get("built_with", {}), env)
    if diffs:
        source = manifest.get("source", {}).get("bundle") or manifest.get("source", {}).get("path", "QUANTIZED")
        raise CheckpointError(
            f"{folder}: {'; '.join(diffs)}. A TensorRT engine runs only on the GPU architecture and the TensorRT / "
            f"TensorRT-LLM versions it was built with; rebuild it on this machine: "
            f"vila-edge build-engine {source} -o NEW_ENGINE --target {manifest['target']}"
        )


def fake_prompt(ids: list[int], n_images: int, tokens_per_image: int, vocab_size: int, image_end_ids: list[int]) -> np.ndarray:
    """Prompt ids with each image block replaced by ids vocab_size, vocab_size + 1, ...: TensorRT-LLM looks
    those rows up in the prompt table (the image embeddings, flattened in order) instead of the vocabulary."""
    return fake_ids(ids, [tokens_per_image] * n_images, vocab_size, image_end_ids)


def fake_ids(ids: list[int], lengths: list[int], vocab_size: int, image_end_ids: list[int]) -> np.ndarray:
    """fake_prompt for image blocks of any lengths (a LLaMA-VID video's block beside an image's), in order."""
    starts = np.cumsum([0, *lengths])
    blocks = [vocab_size + np.arange(start, start + n) for start, n in zip(starts, lengths)]
    as_ids = lambda run: np.asarray(run, dtype=np.int64)  # noqa: E731
    return np.concatenate(splice_parts(ids, blocks if lengths else None, as_ids, image_end_ids)).astype(np.int32)


def table_prompt(ids: list[int], image_embeds: np.ndarray | None, vocab_size: int, image_end_ids: list[int],
                 limits: dict) -> "TablePrompt":
    """Prompt ids with image markers + [N, T, H] image blocks -> what TensorRT-LLM takes; refuses what the
    engine's limits cannot hold, naming the build-engine option that raises them."""
    blocks = [] if image_embeds is None else list(image_embeds)  # [N, T, H], or blocks [T_i, H] (a LLaMA-VID video)
    n, rows = len(blocks), sum(len(b) for b in blocks)
    if rows > limits["max_multimodal_len"]:
        if limits.get("max_frames"):
            raise UsageError(f"the video and images need {rows} prompt-table rows; this engine was built for "
                             f"{limits['max_frames']} frames ({limits['max_multimodal_len']} rows): sample fewer frames, "
                             "or rebuild it with a larger build-engine --max-frames")
        raise UsageError(f"{n} image(s) need {rows} prompt-table rows; this engine was built for {limits['images']} "
                         f"({limits['max_multimodal_len']} rows): rebuild it with build-engine --images {n}")
    fake = fake_ids(ids, [len(b) for b in blocks], vocab_size, image_end_ids)
    if len(fake) > limits["max_input_len"]:
        raise UsageError(f"the prompt is {len(fake)} tokens with its images; this engine takes {limits['max_input_len']} "
                         "(build-engine --max-input-len)")
    return TablePrompt(fake, np.concatenate(blocks)[None] if n else None)


# ---- running ----------------------------------------------------------------------------------


@dataclass
class TablePrompt:
    """A spliced prompt for TensorRT-LLM: ids with fake image ids, and the prompt table they index: [1, N·T, H],
    one task (this request's images) of N·T rows, as ModelRunnerCpp indexes the table by prompt task."""

    ids: np.ndarray
    table: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)


class TrtVision:
    """One vision plan, batches of at most max_batch: pixels [N, 3, S, S] float32 -> image_embeds [N, T, H] (or a
    multi-scale tower's features), or a multi-scale projector's merged features -> image_embeds; float32."""

    def __init__(self, plan: Path, max_batch: int):
        import tensorrt as trt
        import torch

        self.torch, self.max_batch = torch, max_batch
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise CheckpointError(f"{plan}: TensorRT cannot deserialize it; rebuild the engine on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT  # noqa: E731
        self.input = next(n for n in names if is_input(n))
        self.output = next(n for n in names if not is_input(n))
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16}
        if hasattr(trt, "int64"):  # LLaMA-VID's question ids (TensorRT 10 has int64 I/O)
            to_torch[trt.int64] = torch.int64
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}
        self.in_dtype, self.out_dtype = self.dtypes[self.input], self.dtypes[self.output]
        self.stream = torch.cuda.Stream()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.concatenate([self._run({self.input: pixels[start : start + self.max_batch]})
                               for start in range(0, len(pixels), self.max_batch)])

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One run of the plan on `feeds` (input name -> array, within its profile) -> its output, float32."""
        torch = self.torch
        # the uploads, the casts and the output on the stream TensorRT runs on, so the plan never reads a half-cast input
        with torch.cuda.stream(self.stream):
            xs = {n: torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE, self.dtypes[n]) for n, a in feeds.items()}
            for name, x in xs.items():
                self.context.set_input_shape(name, tuple(x.shape))
            y = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype, device=DEVICE)
            for name, x in xs.items():
                self.context.set_tensor_address(name, x.data_ptr())
            self.context.set_tensor_address(self.output, y.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT failed to run the vision plan")
        self.stream.synchronize()
        return y.float().cpu().numpy()


class TrtAttention(TrtVision):
    """LLaMA-VID's attention plan: tower features [N, P+1, C] + the question's Q-Former ids [L] -> frame tokens
    [N, T, H] float32, at most max_batch frames a run (its profile), the question's length within 1..256."""

    def __call__(self, features: np.ndarray, question_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(question_ids, dtype=np.int64).reshape(1, -1)
        return np.concatenate([self._run({FEATURES: features[start : start + self.max_batch], QUESTION_IDS: ids})
                               for start in range(0, len(features), self.max_batch)])


class TrtEngine:
    """The captioning front's backend on a GPU: encode_images, splice (fake ids + prompt table) and
    generate_tokens (TensorRT-LLM samples; the front applies its own stop rules to the stream)."""

    def __init__(self, root: str | Path, env: dict | None = None):
        self.root = Path(root)
        self.manifest = read_manifest(self.root, GPU_TARGETS)
        if env is None:
            env, missing = probe_environment()
            if missing:
                target = TARGETS[self.manifest["target"]]
                raise UnsupportedError(f"{self.root} is a TensorRT engine for {target.name}; running it needs TensorRT, "
                                       f"TensorRT-LLM and the GPU: {'; '.join(missing)}. Install {install_hint(target.jetson)}")
        check_engine(self.root, self.manifest, env)
        self.info = EngineInfo(self.root, self.manifest)
        self.tokenizer, self.image_end_ids = self.info.load_tokenizer()
        limits = self.manifest["limits"]
        vision = self.manifest.get("vision")
        tower_batch = limits.get("tower_batch") or limits["max_batch"] * limits["images"]
        self.vision = TrtVision(self.root / vision["plan"], tower_batch) if vision else None
        self.projector = vision and vision.get("projector_plan") and \
            TrtVision(self.root / vision["projector_plan"], vision["projector_batch"])
        self.attention = vision and vision.get("attention_plan") and \
            TrtAttention(self.root / vision["attention_plan"], vision["attention_batch"])
        self.runner = self._runner(self.root / self.manifest["llm"]["engine_dir"], limits)

    @staticmethod
    def _runner(engine_dir: Path, limits: dict):
        """TensorRT-LLM's C++ runner (the Python ModelRunner takes neither the KV-cache cap nor a 3-D prompt table)."""
        try:
            from tensorrt_llm.runtime import ModelRunnerCpp
        except ImportError as e:
            raise UnsupportedError(f"this TensorRT-LLM has no ModelRunnerCpp ({e}); vila-edge runs engines through it: "
                                   f"install {DESKTOP_STACK.install}, or on Jetson {JETSON_STACK.install}") from None
        # The KV cache sized for the engine's limits, not 90 % of free memory: Jetson shares it with the CPU.
        return ModelRunnerCpp.from_dir(engine_dir=str(engine_dir), rank=0,
                                       max_tokens_in_paged_kv_cache=limits["max_batch"] * limits["max_seq_len"])

    @property
    def vocab_size(self) -> int:
        return self.manifest["llm"]["vocab"]

    def encode_images(self, pixels: np.ndarray, question_ids: np.ndarray | None = None) -> np.ndarray:
        """pixels [N, 3, S, S] -> image tokens [N, T, H]; LLaMA-VID's conditioned on the question's ids [L]."""
        if self.info.family.question_conditioned:
            return self.frame_tokens(self.tower_features(pixels), question_ids)
        return self.info.require_vision(self.vision)(pixels)

    def tower_features(self, pixels: np.ndarray) -> np.ndarray:
        """LLaMA-VID: pixels -> the tower plan's features [N, P+1, C]."""
        return self.info.require_vision(self.vision)(pixels)

    def frame_tokens(self, features: np.ndarray, question_ids: np.ndarray) -> np.ndarray:
        """LLaMA-VID: features + the question's ids -> frame tokens [N, T, H] (its attention plan)."""
        return self.info.require_attention(self.attention)(features, question_ids)

    def encode_multiscale(self, layout, images) -> list[np.ndarray]:
        return encode_multiscale(layout, images, self.info.require_vision(self.vision), self.info.require_projector(self.projector))

    def splice(self, ids: list[int], image_embeds: np.ndarray | None) -> "TablePrompt":
        return table_prompt(ids, image_embeds, self.vocab_size, self.image_end_ids, self.manifest["limits"])

    def max_new_tokens(self, prompt_len: int, wanted: int) -> int:
        """`wanted`, within what the engine's max_seq_len leaves after the prompt (ModelRunnerCpp refuses more)."""
        room = self.manifest["limits"]["max_seq_len"] - prompt_len
        if room <= 0:
            raise UsageError(f"the prompt is {prompt_len} tokens; this engine holds {self.manifest['limits']['max_seq_len']} "
                             "with the answer: shorten the prompt, or rebuild with build-engine --max-seq-len")
        return min(wanted, room)

    def generate_tokens(self, inputs: TablePrompt, params):
        import torch

        ids, table = inputs.ids, inputs.table
        greedy = params.temperature <= 0
        outputs = self.runner.generate(
            batch_input_ids=[torch.from_numpy(ids)],
            prompt_table=None if table is None else torch.from_numpy(table).to(DEVICE, torch.float16),
            prompt_tasks=None if table is None else "0",
            max_new_tokens=self.max_new_tokens(len(ids), params.max_new_tokens),
            end_id=self.tokenizer.eos_token_id,
            pad_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id,
            temperature=1.0 if greedy else params.temperature,
            top_k=1 if greedy else 0,
            top_p=0.0 if greedy else params.top_p,
            random_seed=params.seed,
            streaming=True,
            return_dict=True,
            output_sequence_lengths=True,
        )
        done = len(ids)
        for out in outputs:
            length = int(out["sequence_lengths"][0][0])
            new = out["output_ids"][0][0][done:length].tolist()
            done = length
            yield from new

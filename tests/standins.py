"""Stand-ins for TensorRT-LLM's ModelRunnerCpp, TensorRT's runtime API and torch.cuda's streams, for CPU tests.

They check the calls the trt backend makes, not behaviour we claim: each method takes exactly the keyword arguments
the real one takes (TensorRT-LLM 0.12-era and 1.x `model_runner_cpp.py`; TensorRT 10 `pyCore.cpp`) and applies the
rules the real one applies to its inputs (the checks named in each docstring), then records the call. What they
return is scripted: a token list, a vision output computed from the input bytes. Nothing here says a GPU engine
produces those numbers.
"""

import ctypes
import json
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

# SamplingConfig's fields that ModelRunnerCpp.generate takes as keyword arguments (tensorrt_llm/runtime/generation.py)
SAMPLING_FIELDS = {"temperature", "top_k", "top_p", "random_seed", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "length_penalty", "num_beams", "min_length", "early_stopping", "beam_search_diversity_rate"}


def write_engine_config(engine_dir: Path, limits: dict, vocab: int, hidden: int) -> None:
    """The parts of a TensorRT-LLM engine's config.json that ModelRunnerCpp reads its limits from."""
    engine_dir.mkdir(parents=True, exist_ok=True)
    config = {"pretrained_config": {"vocab_size": vocab, "hidden_size": hidden},
              "build_config": {"max_batch_size": limits["max_batch"], "max_input_len": limits["max_input_len"],
                               "max_seq_len": limits["max_seq_len"],
                               "max_prompt_embedding_table_size": limits["max_multimodal_len"]}}
    (engine_dir / "config.json").write_text(json.dumps(config))


class ModelRunnerCpp:
    """tensorrt_llm.runtime.ModelRunnerCpp: from_dir and generate with the real keyword sets; `script` is the
    token list every generate call answers with (up to end_id or max_new_tokens)."""

    script: list[int] = [5, 6, 7, 8, 9, 10, 11, 12]
    instances: list["ModelRunnerCpp"] = []

    def __init__(self, config: dict, from_dir_kwargs: dict):
        self.build, self.pretrained = config["build_config"], config["pretrained_config"]
        self.from_dir_kwargs, self.calls = from_dir_kwargs, []
        ModelRunnerCpp.instances.append(self)

    @classmethod
    def from_dir(cls, engine_dir, *, lora_dir=None, rank=0, max_batch_size=None, max_input_len=None, max_output_len=None,
                 max_beam_width=None, max_attention_window_size=None, sink_token_length=None,
                 kv_cache_free_gpu_memory_fraction=None, medusa_choices=None, debug_mode=False, lora_ckpt_source="hf",
                 gpu_weights_percent=1, max_tokens_in_paged_kv_cache=None, kv_cache_enable_block_reuse=False,
                 enable_chunked_context=False, is_enc_dec=False, multi_block_mode=True, enable_context_fmha_fp32_acc=None,
                 cuda_graph_mode=None):
        config = json.loads((Path(engine_dir) / "config.json").read_text())
        return cls(config, {"engine_dir": engine_dir, "rank": rank, "max_tokens_in_paged_kv_cache": max_tokens_in_paged_kv_cache})

    def generate(self, batch_input_ids, *, sampling_config=None, lora_uids=None, streaming=False, stopping_criteria=None,
                 logits_processor=None, max_new_tokens=1, end_id=None, pad_id=None, bad_words_list=None,
                 stop_words_list=None, return_dict=False, output_sequence_lengths=False, output_log_probs=False,
                 output_cum_log_probs=False, prompt_table=None, prompt_tasks=None, input_token_extra_ids=None,
                 return_all_generated_tokens=False, **kwargs):
        """_check_inputs' limits (input + max_new_tokens within max_seq_len, input within max_input_len) and
        _prepare_ptuning_executor's table (indexed by task: [tasks, rows, hidden], each task's table 2-D for
        PromptTuningConfig); the sampling keywords must be SamplingConfig fields."""
        unknown = set(kwargs) - SAMPLING_FIELDS
        if unknown:
            raise TypeError(f"generate() got unexpected keyword arguments {sorted(unknown)}")
        assert isinstance(batch_input_ids, list) and len(batch_input_ids) == 1, "one request"
        ids = batch_input_ids[0]
        assert ids.dtype == torch.int32 and ids.ndim == 1, (ids.dtype, ids.shape)
        n = len(ids)
        if n > self.build["max_input_len"]:
            raise RuntimeError(f"Maximum input length ({n}) exceeds the engine limit ({self.build['max_input_len']})")
        if n + max_new_tokens > self.build["max_seq_len"]:
            raise RuntimeError(f"Maximum input length ({n}) + maximum new tokens ({max_new_tokens}) exceeds the "
                               f"engine or specified limit ({self.build['max_seq_len']})")
        vocab = self.pretrained["vocab_size"]
        if prompt_table is None:
            assert prompt_tasks is None and int(ids.max()) < vocab, "ids past the vocabulary need a prompt table"
        else:
            assert prompt_table.ndim == 3, f"prompt table {tuple(prompt_table.shape)}: ModelRunnerCpp indexes it by task"
            assert prompt_table.dtype == torch.float16 and prompt_table.shape[2] == self.pretrained["hidden_size"]
            tasks = [int(t) for t in prompt_tasks.split(",")]
            assert len(tasks) == len(batch_input_ids) and all(0 <= t < prompt_table.shape[0] for t in tasks)
            rows = prompt_table[tasks[0]].shape[0]
            assert rows <= self.build["max_prompt_embedding_table_size"]
            assert int(ids.max()) < vocab + rows, "a fake id past its table"
        assert streaming and return_dict and output_sequence_lengths, "the trt backend streams"
        self.calls.append({"ids": ids.tolist(), "table": None if prompt_table is None else prompt_table.float().numpy(),
                           "prompt_tasks": prompt_tasks, "max_new_tokens": max_new_tokens, "end_id": end_id,
                           "pad_id": pad_id, **kwargs})
        return self._stream(ids.tolist(), max_new_tokens, end_id)

    def _stream(self, prompt: list[int], max_new_tokens: int, end_id: int):
        """Streaming outputs as ModelRunnerCpp gives them: output_ids [batch, beam, prompt + generated so far]."""
        out = list(prompt)
        for token in self.script[:max_new_tokens]:
            out.append(token)
            yield {"output_ids": torch.tensor([[out]]), "sequence_lengths": torch.tensor([[len(out)]])}
            if token == end_id:
                return


def tensorrt_llm_module(version: str = "0.12.0") -> types.ModuleType:
    module, runtime = types.ModuleType("tensorrt_llm"), types.ModuleType("tensorrt_llm.runtime")
    module.__version__, module.runtime, runtime.ModelRunnerCpp = version, runtime, ModelRunnerCpp
    return module


# ---- TensorRT's runtime, for the vision plan ----------------------------------------------------------------


class CudaStreams:
    """torch.cuda.Stream and torch.cuda.stream: which stream is current, and every synchronize."""

    def __init__(self):
        self.current, self.log = 0, []
        streams = self

        class Stream:
            def __init__(self):
                self.cuda_stream = 1000 + len(streams.log)

            def synchronize(self):
                streams.log.append(("synchronize", self.cuda_stream))

        self.Stream = Stream

    @contextmanager
    def stream(self, s):
        before, self.current = self.current, s.cuda_stream
        try:
            yield
        finally:
            self.current = before


class PlanEngine:
    """An ICudaEngine stand-in: its I/O tensors (`names`: name -> (mode, dtype)), and `context()` per execution context."""

    def __init__(self, names: dict, context):
        self.names, self.context = names, context
        self.num_io_tensors = len(names)

    def get_tensor_name(self, i):
        return list(self.names)[i]

    def get_tensor_mode(self, name):
        return self.names[name][0]

    def get_tensor_dtype(self, name):
        return self.names[name][1]

    def create_execution_context(self):
        return self.context()


def install_trt_llm(monkeypatch) -> CudaStreams:
    """TensorRT-LLM's stand-in in sys.modules, vila_edge's TensorRT runtime's tensors on the CPU, torch.cuda's
    streams recorded (the CudaStreams returned)."""
    from vila_edge.runtime import trt

    streams = CudaStreams()
    monkeypatch.setattr(trt, "DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "Stream", streams.Stream)
    monkeypatch.setattr(torch.cuda, "stream", streams.stream)
    monkeypatch.setitem(sys.modules, "tensorrt_llm", tensorrt_llm_module())
    monkeypatch.setitem(sys.modules, "tensorrt_llm.runtime", sys.modules["tensorrt_llm"].runtime)
    ModelRunnerCpp.instances.clear()
    return streams


def tensorrt_module(streams: CudaStreams, tokens: int, hidden: int, max_batch: int, version: str = "10.3.0"):
    """tensorrt's Runtime / ICudaEngine / IExecutionContext as TrtVision uses them. The plan's output for image b is
    the mean of its pixels, repeated over [tokens, hidden]: enough to see that every batch lands in its place."""
    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.float32, trt.float16 = version, "float32", "float16"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    names = {"pixel_values": ("INPUT", "float32"), "image_embeds": ("OUTPUT", "float32")}
    runs = []

    class Context:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            assert names[name][0] == "INPUT" and 1 <= shape[0] <= max_batch, (name, shape)
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            assert name == "image_embeds" and "pixel_values" in self.shapes, "output shape asked before the input's"
            return (self.shapes["pixel_values"][0], tokens, hidden)

        def set_tensor_address(self, name, address):
            assert name in names and address
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle):
            """Inputs must be ready on the stream the plan runs on: every address set, and on `stream_handle`."""
            assert set(self.addresses) == set(names) and stream_handle == streams.current, (stream_handle, streams.current)
            b, c, h, w = self.shapes["pixel_values"]
            x = np.ctypeslib.as_array(ctypes.cast(self.addresses["pixel_values"], ctypes.POINTER(ctypes.c_float)), (b, c * h * w))
            y = np.ctypeslib.as_array(ctypes.cast(self.addresses["image_embeds"], ctypes.POINTER(ctypes.c_float)), (b, tokens * hidden))
            y[:] = x.mean(axis=1, keepdims=True)
            runs.append({"batch": b, "stream": stream_handle})
            return True

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            return PlanEngine(names, Context) if data == b"stand-in plan" else None

    trt.Runtime, trt.runs = Runtime, runs
    return trt


def add_attention_plan(trt, streams: CudaStreams, tokens: int, hidden: int, max_frames: int, max_question: int = 256):
    """LLaMA-VID's attention plan beside the vision plan of `trt` (tensorrt_module): the bytes b"stand-in attention
    plan" deserialize to an engine with TensorRT's two-input API use (image_features float32 [1..max_frames, P, C],
    question_ids int64 [1, 1..max_question], the profile's bounds checked) -> frame_tokens. Frame b's output is the mean
    of its features plus the sum of the ids, so that both inputs and every batch can be seen landing in place."""
    trt.int64 = "int64"
    names = {"image_features": ("INPUT", "float32"), "question_ids": ("INPUT", "int64"), "frame_tokens": ("OUTPUT", "float32")}
    runs = trt.attention_runs = []

    class Context:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            assert names[name][0] == "INPUT", name
            if name == "image_features":
                assert len(shape) == 3 and 1 <= shape[0] <= max_frames, shape
            else:
                assert len(shape) == 2 and shape[0] == 1 and 1 <= shape[1] <= max_question, shape
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            assert name == "frame_tokens" and len(self.shapes) == 2, "output shape asked before both inputs'"
            return (self.shapes["image_features"][0], tokens, hidden)

        def set_tensor_address(self, name, address):
            assert name in names and address
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle):
            assert set(self.addresses) == set(names) and stream_handle == streams.current, (stream_handle, streams.current)
            (b, p, c), (_, n) = self.shapes["image_features"], self.shapes["question_ids"]
            view = lambda name, ctype, shape: np.ctypeslib.as_array(  # noqa: E731
                ctypes.cast(self.addresses[name], ctypes.POINTER(ctype)), shape)
            x, ids = view("image_features", ctypes.c_float, (b, p * c)), view("question_ids", ctypes.c_int64, (1, n))
            y = view("frame_tokens", ctypes.c_float, (b, tokens * hidden))
            y[:] = x.mean(axis=1, keepdims=True) + ids.sum()
            runs.append({"batch": b, "question": n, "stream": stream_handle})
            return True

    vision_runtime = trt.Runtime

    class Runtime(vision_runtime):
        def deserialize_cuda_engine(self, data):
            return PlanEngine(names, Context) if data == b"stand-in attention plan" else super().deserialize_cuda_engine(data)

    trt.Runtime = Runtime
    return trt

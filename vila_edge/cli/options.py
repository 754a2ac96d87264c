"""Arguments built from the options dataclasses, so no default is written twice, and the flags that
mean the same thing in every command that takes them. One help text per option (MLC-LLM's HELP)."""

import argparse
import dataclasses
import re
import types
from pathlib import Path

HELP = {
    "allow_pickle": "accept pickle (.bin/.pt) weights; they can run code",
    "qformer_tokenizer": "LLaMA-VID: a local copy of bert-base-uncased (vocab.txt) for the Q-Former's question "
                         "(default: the Hugging Face cache; never the network)",
    "max_frames": "LLaMA-VID --video: at most this many frames, spread over the video (or --start/--end)",
    "start": "LLaMA-VID --video: from this second",
    "end": "LLaMA-VID --video: up to this second",
    "feature_cache": "LLaMA-VID --video: where per-frame tower features are cached by content "
                     "(default: $VILA_EDGE_CACHE/features, else ~/.cache/vila-edge/features)",
    "no_feature_cache": "LLaMA-VID --video: run the tower on every frame, keep nothing on disk",
    "vision_tower": "LLaVA-1.5: a local copy of the CLIP tower its config.json names by hub id "
    "(openai/clip-vit-large-patch14-336) where neither that path nor the Hugging Face cache has it",
    "hf_processor": "LLaVA-1.5: llava-hf's hub image processor (no pad, centre crop) and chat template (no system "
    "prompt), as transformers runs it; not what LLaVA-1.5 was trained with (pad, vicuna_v1: the default)",
    "conv_mode": "conversation template (default: the checkpoint's own)",
    "device": "where PyTorch runs: auto is cuda when it sees one",
    "projector_order": "override the projector's token order",
    "overwrite": "replace OUT if it exists",
    # sampling
    "max_new_tokens": "tokens to generate at most",
    "temperature": "0 is greedy",
    "top_p": "nucleus sampling mass",
    "seed": "sampling seed",
    # the backend a caption runs on
    "backend": "auto: the engine's own (cpu, or trt for a GPU target), torch for a checkpoint; onnx: a checkpoint's "
    "W8A8 vision ONNX on ONNX Runtime with the LLM on torch",
    "threads": "cpu engine threads (default: the cores, at most 8)",
    "kernels": "cpu engine kernels to force (ref, avx2, avx512, avx512vnni, neon, neon-dotprod)",
    "max_seq": "cpu engine KV cache positions (default: the model's max length)",
    "activations": "cpu engine: int8 blocks into the int4 linears (fast) or fp32 (exact with an fp16 lm_head; slower)",
    "kv_cache": "cpu engine KV cache storage: fp16 (the default; half of fp32's memory), int8 (blocks of 32 with an "
    "fp16 scale: 0.53x fp16's) or fp32 (exact); allocated for the context in use, grown on demand up to --max-seq",
    "vision_backend": "cpu engine vision tower: native (our int8 kernels, for SigLIP, CLIP and DINOv2 towers) or ort "
    "(ONNX Runtime, the fallback); default: the one build-engine timed faster (ort on NEON for now)",
    "dtype": "auto: float16 on CUDA (as VILA), float32 on CPU",
    "max_tiles": "NVILA / NVILA-Lite: tiles per image at most (default: the checkpoint's max_tiles, 12); 1 is one "
    "tile (fastest)",
    # live sources
    "every": "--source: caption every Nth frame",
    "fps": "--source: caption at most F frames per second of the source (instead of --every); LLaMA-VID --video: "
           "the frames sampled per second (default 1, every round(video fps / F)-th frame)",
    "window": "--source: the K most recent sampled frames in each prompt",
    "max_captions": "--source: stop after this many captions",
    "realtime": "--source FILE: play the file at its frame rate, dropping frames that arrive while the model is busy, "
    "as a camera would",
    "record": "--source: save the video with the latest caption drawn over it (and with --alert a clip around each "
    "alert, OUT.alert-001.mp4, ...)",
    "alert": "--source: mark captions matching REGEX (case-insensitive)",
    "reconnect_timeout": "--source rtsp://...: seconds to keep reconnecting to a lost stream",
    # quantize
    "group_size": "AWQ group size; must divide every layer's in_features",
    "w_bit": "weight bits",
    "duo_scaling": "AutoAWQ's scales from activation and weight means",
    "clip": "skip the clip search",
    "n_samples": "calibration sequences",
    "seqlen": "tokens per calibration sequence",
    "eval_text": "also report fp / RTN / AWQ perplexity on this text",
    "eval_tokens": "tokens of --eval-text to score",
    "max_shard_bytes": "largest safetensors shard",
    "alpha": "one SmoothQuant migration strength for every layer (default: each layer's searched on its linears' int8 "
             "output error)",
    "method": "how each activation's int8 range is chosen (mse: searched on its readers' output error)",
    "target_cosine": "held-out cosine (mean) the W8A8 tower must reach; under it the worst layers stay float",
    "min_cosine": "held-out cosine every image must reach; under it the worst layers stay float",
    "max_float_layers": "at most this many encoder layers kept float (default: a third; 0: all int8)",
    "n_images": "images the vision tower is calibrated on",
    "weight_bits": "7 keeps ONNX Runtime's int8 kernels exact on CPUs without VNNI; 8 for TensorRT only",
    # eval-ppl
    "max_tokens": "tokens of the text to score, from its start",
    # bench
    "prompt_len": "text tokens in the prompt (images add theirs)",
    "gen_len": "tokens generated (no early stop on the cpu engine)",
    "images": "images in the prompt",
    "repeat": "timed runs",
    "warmup": "untimed runs first",
}


def size(text: str) -> int:
    """'5GB', '500MB', '1.5G' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 2GB or 500MB")
    return int(float(m.group(1)) * 1024 ** "_KMG".index(m.group(2) or "_"))


def shown_size(n: int) -> str:
    return f"{n / 2**30:g}GB" if n % 2**30 == 0 else f"{n / 2**20:g}MB"


def _value_type(annotation):
    """int, float, str or Path from a field's annotation (`int | None` -> int)."""
    if isinstance(annotation, types.UnionType):
        annotation = next(a for a in annotation.__args__ if a is not type(None))
    return annotation if annotation in (int, float, str, Path) else str


def default_of(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def add_fields(parser, cls, *names: str, flags: dict[str, str] | None = None, **extra: dict) -> None:
    """One option per field of the dataclass `cls` named in `names`, its default and type the field's.
    A bool field defaulting to False is `--name`; one defaulting to True is `--no-name`. `flags` renames
    an option; `extra[name]` adds argparse keywords (choices, metavar, ...)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        default, more = default_of(cls, name), dict(extra.get(name, {}))
        shown = more.pop("shown", str)  # how the default reads in --help
        kwargs = {"dest": name, "default": default, "help": more.pop("help", HELP.get(name, ""))}
        if isinstance(default, bool):
            kwargs["action"] = "store_false" if default else "store_true"
            flag = (flags or {}).get(name, f"--{'no-' if default else ''}{name.replace('_', '-')}")
        else:
            flag = (flags or {}).get(name, f"--{name.replace('_', '-')}")
            kwargs["type"] = _value_type(fields[name].type)
            if "choices" not in more:
                kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
            if default is not None:
                kwargs["help"] += f" (default: {shown(default)})"
        parser.add_argument(flag, **(kwargs | more))


def from_args(cls, args, *names: str, **values):
    """The dataclass `cls` from the parsed options `names` (as add_fields made them) and `values`."""
    return cls(**{n: getattr(args, n) for n in names}, **values)


def add_allow_pickle(parser) -> None:
    parser.add_argument("--allow-pickle", action="store_true", help=HELP["allow_pickle"])


def add_llava_options(parser) -> None:
    """--vision-tower, --hf-processor and --qformer-tokenizer: how a LLaVA-1.5 or LLaMA-VID folder is read in place."""
    parser.add_argument("--vision-tower", metavar="PATH", help=HELP["vision_tower"])
    parser.add_argument("--hf-processor", action="store_true", help=HELP["hf_processor"])
    parser.add_argument("--qformer-tokenizer", metavar="PATH", help=HELP["qformer_tokenizer"])


def llava_options(args) -> dict:
    return {"vision_tower": args.vision_tower, "hf_processor": args.hf_processor,
            "qformer_tokenizer": args.qformer_tokenizer}


def add_conv_mode(parser, help: str = HELP["conv_mode"]) -> None:
    parser.add_argument("--conv-mode", help=help)


def add_device(parser, help: str = HELP["device"]) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=help)


def add_format(parser, *choices: str) -> None:
    parser.add_argument("--format", choices=choices or ("text", "json"), default=(choices or ("text",))[0])


def add_overwrite(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help=HELP["overwrite"])

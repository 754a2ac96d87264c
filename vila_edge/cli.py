"""`vila-edge`: inspect, demo-checkpoint, caption, quantize, eval-ppl, build-engine, bench, bench-table, plan."""

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import UsageError, VilaEdgeError
from .generate import SamplingParams
from .targets import TARGETS


def _count(shapes: dict) -> int:
    total = 0
    for shape in shapes.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def cmd_inspect(args) -> int:
    from .checkpoint import SUBFOLDERS, load_checkpoint, tensor_shapes
    from .conversation import resolve_conv_mode
    from .model.projector import PROJECTORS
    from .model.vlm import load_tokenizer

    ckpt = load_checkpoint(args.checkpoint, allow_pickle=args.allow_pickle)
    conv_mode, conv_source = resolve_conv_mode(ckpt, args.conv_mode, load_tokenizer(ckpt))
    spec = PROJECTORS[ckpt.projector_type]
    lc, vc = ckpt.llm_config, ckpt.vision_config
    params = {n: _count(tensor_shapes(ckpt.weights[n])) for n in SUBFOLDERS if not ckpt.is_pickle(n)}
    info = {
        "checkpoint": str(ckpt.root),
        "family": ckpt.family.name,
        "config": ckpt.config.get("model_type"),
        "llm": {k: lc.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                        "num_key_value_heads", "intermediate_size", "vocab_size")},  # fmt: skip
        "vision": {
            "kind": ckpt.vision_kind,
            **{k: vc.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")},
            "select_layer": ckpt.select_layer,
            "select_feature": ckpt.select_feature,
            "image_aspect_ratio": ckpt.image_aspect_ratio,
        },
        "projector": {"type": ckpt.projector_type, "order": ckpt.projector_order(args.projector_order) or None,
                      "downsample": spec.downsample},  # fmt: skip
        "tokens_per_image": ckpt.tokens_per_image,
        "num_video_frames": ckpt.num_video_frames,
        "conv_mode": conv_mode,
        "conv_mode_source": conv_source,
        "quantization": lc.get("quantization_config"),
        "parameters": params,
    }
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    llm, vis, proj = info["llm"], info["vision"], info["projector"]
    lines = [
        f"checkpoint   {info['checkpoint']} ({info['config']}, family {info['family']})",
        f"llm          {llm['model_type']}: hidden {llm['hidden_size']}, {llm['num_hidden_layers']} layers, "
        f"{llm['num_attention_heads']} heads / {llm['num_key_value_heads']} kv, ffn {llm['intermediate_size']}, "
        f"vocab {llm['vocab_size']}",
        f"vision       {vis['kind']}: hidden {vis['hidden_size']}, {vis['num_hidden_layers']} layers, "
        f"{vis['num_attention_heads']} heads, {vis['image_size']} px / patch {vis['patch_size']}; "
        f"layer {vis['select_layer']} {vis['select_feature']}, {vis['image_aspect_ratio']}",
        f"projector    {proj['type']}" + (f" ({proj['order']}-major tokens)" if proj["order"] else ""),
        f"image tokens {info['tokens_per_image']} per image; {info['num_video_frames']} frames per video",
        f"conv mode    {conv_mode} (from {conv_source})",
    ]
    if info["quantization"]:
        qc = info["quantization"]
        lines.append(f"quantization {qc.get('quant_method')} int{qc.get('bits')} group {qc.get('group_size')} "
                     f"({qc.get('version')} layout)")  # fmt: skip
    if params:
        lines.append("parameters   " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.items()))
    print("\n".join(lines))
    return 0


def cmd_demo_checkpoint(args) -> int:
    from .demo import build_demo_checkpoint

    out = build_demo_checkpoint(args.out, seed=args.seed)
    print(f"wrote {out}: SmolLM2-135M-Instruct + a random (untrained) SigLIP tower and mlp_downsample projector")
    return 0


def engine_backend(folder) -> str:
    """"cpu" or "trt": which backend runs an engine folder, by the target in its manifest."""
    try:
        target = json.loads((Path(folder) / "manifest.json").read_text()).get("target")
    except (OSError, ValueError, AttributeError):
        return "cpu"  # CpuEngine's manifest check says what is wrong
    return "cpu" if target == "cpu" or target not in TARGETS else "trt"


def _load_for_caption(args):
    """(what the captioner reads, the backend, its name): an engine folder or a checkpoint."""
    from .runtime.manifest import is_engine

    if is_engine(args.source):
        kind = engine_backend(args.source)
        if args.backend not in ("auto", kind):
            raise UsageError(f"{args.source} is a {kind} engine, run by --backend {kind}; drop --backend {args.backend}")
        if kind == "trt":
            from .runtime.trt import TrtEngine

            engine = TrtEngine(args.source)
            return engine.info, engine, f"trt ({engine.manifest['target']})"
        from .runtime.cpu import CpuEngine

        engine = CpuEngine(args.source, threads=args.threads, kernels=args.kernels, max_seq=args.max_seq,
                           activations=args.activations)  # fmt: skip
        return engine.info, engine, f"cpu ({engine.kernels}, {engine.threads} threads)"
    from .checkpoint import load_checkpoint
    from .model.vlm import VilaModel

    if args.backend in ("cpu", "trt"):
        raise UsageError(f"{args.source}: --backend {args.backend} runs engine folders; build one with vila-edge build-engine")
    ckpt = load_checkpoint(args.source, allow_pickle=args.allow_pickle)
    backend = "torch" if args.backend == "auto" else args.backend
    model = VilaModel(ckpt, device=args.device, dtype=args.dtype, projector_order=args.projector_order,
                      vision_backend=backend)  # fmt: skip
    return ckpt, model, backend


def cmd_caption(args) -> int:
    from .caption import Captioner
    from .media import load_image, load_video_frames

    if args.stream is not None:
        return _caption_source(args)
    stream_only = {"--every": args.every != 1, "--fps": args.fps is not None, "--window": args.window != 1,
                   "--max-captions": args.max_captions is not None, "--realtime": args.realtime,
                   "--record": args.record is not None, "--alert": args.alert is not None}  # fmt: skip
    if any(stream_only.values()):
        given = ", ".join(flag for flag, on in stream_only.items() if on)
        raise UsageError(f"{given}: these sample a --source; with --image or --video drop them")
    ckpt, model, backend = _load_for_caption(args)
    if args.video:
        images = load_video_frames(args.video, args.num_frames or ckpt.num_video_frames)
        source = args.video
    else:
        images = [load_image(p) for p in args.image or []]
        source = ",".join(args.image or [])
    captioner = Captioner(ckpt, model, args.conv_mode)
    params = SamplingParams(args.temperature, args.top_p, args.max_new_tokens, args.seed)

    started = False

    def stream(delta: str) -> None:
        nonlocal started
        if not started:
            delta = delta.lstrip()
            started = bool(delta)
        print(delta, end="", flush=True)

    answer = captioner(images, args.prompt, params, on_text=stream if args.format == "text" else None)
    if args.format == "text":
        print()
        print(
            f"[{answer.prompt_tokens} prompt tokens ({answer.image_tokens} image), {len(answer.token_ids)} new, "
            f"TTFT {answer.ttft_s:.2f} s, decode {answer.decode_tok_s:.1f} tok/s, conv mode {captioner.conv_mode}]",
            file=sys.stderr,
        )
    else:
        record = {
            "source": source,
            "prompt": args.prompt,
            "text": answer.text,
            "token_ids": answer.token_ids,
            "prompt_tokens": answer.prompt_tokens,
            "image_tokens": answer.image_tokens,
            "images": len(images),
            "stop_reason": answer.stop_reason,
            "vision_s": round(answer.vision_s, 4),
            "ttft_s": round(answer.ttft_s, 4),
            "decode_tok_s": round(answer.decode_tok_s, 2),
            "conv_mode": captioner.conv_mode,
            "backend": backend,
        }
        print(json.dumps(record, ensure_ascii=False), flush=True)
    return 0


def _caption_source(args) -> int:
    """Captions over a camera, stream, video file or image folder, one line (text) or record (jsonl) per
    sampled frame, until the source ends, --max-captions, or Ctrl-C."""
    from contextlib import closing

    from .caption import Captioner
    from .capture import caption_frames, open_source
    from .record import Recorder

    if args.every != 1 and args.fps is not None:
        raise UsageError("--every and --fps both choose the frames; give one")
    try:
        alert = re.compile(args.alert, re.IGNORECASE) if args.alert is not None else None
    except re.error as e:
        raise UsageError(f"--alert {args.alert!r}: not a regular expression ({e})") from None
    log = lambda message: print(f"vila-edge caption: {message}", file=sys.stderr, flush=True)  # noqa: E731
    # a missing file, a camera that cannot be opened or an unreachable stream fails before the model loads
    source = open_source(args.stream, args.every, args.fps, args.realtime, args.reconnect_timeout, log)
    recorder, captions = None, 0
    try:
        if args.record:
            recorder = Recorder(args.record, source.fps, alerts=alert is not None)
            source.tap = recorder.write
        ckpt, model, backend = _load_for_caption(args)
        captioner = Captioner(ckpt, model, args.conv_mode)
        params = SamplingParams(args.temperature, args.top_p, args.max_new_tokens, args.seed)
        loop = caption_frames(captioner, source, args.prompt, params, args.window, args.max_captions, alert, recorder)
        with closing(loop):
            for captions, record in enumerate(loop, start=1):
                if args.format == "jsonl":
                    print(json.dumps(record, ensure_ascii=False), flush=True)
                else:
                    flag = f"ALERT ({record['alert']}) " if "alert" in record else ""
                    print(f"[frame {record['frame_index']} @ {record['timestamp']:.2f} s] {flag}{record['text']}", flush=True)
    finally:
        source.close()
        if source.live and captions:
            log(f"{captions} caption{'s' if captions != 1 else ''}; {source.dropped} sampled frame(s) dropped "
                "while the model was busy" + (f"; {source.reconnects} reconnect(s)" if source.reconnects else ""))  # fmt: skip
        if recorder:
            recorder.close()
            log(f"recorded {recorder.path}" + (f" and {recorder.clips} alert clip(s)" if recorder.clips else ""))
    return 0


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 2GB or 500MB")
    return int(float(m.group(1)) * 1024 ** "_KMG".index(m.group(2) or "_"))


def _ppl_line(ppl: dict) -> str:
    rows = [f"{k} {ppl[k]:.3f}" for k in ("fp", "rtn", "awq") if k in ppl]
    line = f"perplexity on {ppl['tokens']} tokens of {ppl['text']}: " + ", ".join(rows)
    if "awq" in ppl and "rtn" in ppl:
        line += f" (AWQ's gap to fp is {100 * ppl['awq_gap_over_rtn_gap']:.0f} % of RTN's)"
    return line


def cmd_quantize(args) -> int:
    from .model.vlm import resolve_device
    from .quant.awq import AwqSettings
    from .quant.calib import parse_calib
    from .quant.quantize import QuantizeOptions, quantize_checkpoint
    from .quant.vision import VisionQuantOptions

    if args.calib_media and args.calib != "self":
        raise UsageError("--calib-media is the short form of --calib media:PATH; pass one of them")
    calib = parse_calib(f"media:{args.calib_media}" if args.calib_media else args.calib)
    if args.n_samples < 1 or args.seqlen < 16:
        raise UsageError("--n-samples must be at least 1 and --seqlen at least 16")
    settings = AwqSettings(group_size=args.group_size, w_bit=args.w_bit, duo_scaling=args.duo_scaling,
                           clip=not args.no_clip)  # fmt: skip
    vision = None
    if args.vision == "w8a8":
        media = args.calib_media or (calib.path if calib.kind == "media" else None)
        vision = VisionQuantOptions(alpha=args.smooth_alpha, method=args.vision_calib_method, media=media,
                                    n_images=args.vision_calib_images, weight_bits=args.vision_weight_bits)  # fmt: skip
    opts = QuantizeOptions(settings=settings, calib=calib, n_samples=args.n_samples, seqlen=args.seqlen,
                           seed=args.seed, device=resolve_device(args.device), eval_text=args.eval_text,
                           eval_tokens=args.eval_tokens, max_shard_bytes=args.shard_size, vision=vision)  # fmt: skip
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    report = quantize_checkpoint(args.source, args.out, opts, overwrite=args.overwrite, log=log,
                                 progress=not args.quiet, allow_pickle=args.allow_pickle)  # fmt: skip
    sec = report["seconds"]
    layers = report["layers"]
    rtn = sum(r["rtn_loss"] for r in layers) / len(layers)
    awq = sum(r["awq_loss"] for r in layers) / len(layers)
    print(f"wrote {args.out}: AWQ int4 g{args.group_size} ({report['calibration']['tokens']} calibration tokens from "
          f"{report['calibration']['source']}); mean layer-output MSE RTN {rtn:.4g} -> AWQ {awq:.4g}")  # fmt: skip
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in sec.items() if "." not in k))
    if report["perplexity"]:
        print(_ppl_line(report["perplexity"]))
    if report["vision"]:
        v = report["vision"]
        print(f"vision W8A8 ({v['quantized_nodes']} quantized MatMul/Conv, {v['method']} ranges from "
              f"{v['calibration_images']} {v['media']} images, SmoothQuant alpha {v['smooth_alpha']}): cosine "
              f"{v['held_out']['cosine_mean']:.4f} to fp32 on {v['held_out']['images']} held-out images")  # fmt: skip
    for guard in report["guards"]:
        print(f"note: {guard}", file=sys.stderr)
    return 0


def cmd_eval_ppl(args) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .model.vlm import load_tokenizer, resolve_device
    from .quant.awq import rtn_quantize
    from .quant.awq_format import is_awq, load_awq_llm
    from .quant.ppl import eval_tokens, gap_ratio, perplexity
    from .quant.quantize import load_fp_llm

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.source, allow_pickle=args.allow_pickle)
    awq = load_checkpoint(args.awq) if args.awq else None
    if awq is not None and not is_awq(awq.llm_config):
        raise UsageError(f"--awq {args.awq}: its llm/ is not AWQ-quantized")
    tokenizer = load_tokenizer(ckpt)
    seqlen = min(args.seqlen, ckpt.model_max_length)
    windows = eval_tokens(tokenizer, Path(args.text), args.max_tokens, seqlen)
    ppl = {"text": args.text, "tokens": windows.numel(), "seqlen": seqlen}

    measure = lambda model: perplexity(model, windows, device)  # noqa: E731
    if is_awq(ckpt.llm_config):
        ppl["awq"] = measure(load_awq_llm(ckpt.llm_dir, torch.float32, ckpt.weights["llm"]))
    else:
        llm = load_fp_llm(ckpt)
        ppl["fp"] = measure(llm)
        group_size = args.group_size or (awq.llm_config["quantization_config"]["group_size"] if awq else 128)
        rtn_quantize(llm, group_size)
        ppl["rtn"], ppl["rtn_group_size"] = measure(llm), group_size
        del llm
        if awq is not None:
            ppl["awq"] = measure(load_awq_llm(awq.llm_dir, torch.float32, awq.weights["llm"]))
            ppl["awq_gap_over_rtn_gap"] = gap_ratio(ppl["fp"], ppl["rtn"], ppl["awq"])
    print(json.dumps(ppl, indent=2) if args.format == "json" else _ppl_line(ppl))
    return 0


def cmd_build_engine(args) -> int:
    if args.target != "cpu":
        from .export.trt_engine import build_gpu_engine

        limits = {"images": args.images, "max_batch": args.max_batch, "max_input_len": args.max_input_len,
                  "max_seq_len": args.max_seq_len}  # fmt: skip
        code, message = build_gpu_engine(args.quantized, args.out, args.target, args.vision, args.conv_mode, limits,
                                         dry_run=args.dry_run, overwrite=args.overwrite)  # fmt: skip
        print(message, file=sys.stdout if code in (0, 1) else sys.stderr)
        return code
    if args.dry_run or any(v is not None for v in (args.images, args.max_batch, args.max_input_len, args.max_seq_len)):
        raise UsageError("--dry-run, --images and --max-* plan GPU engines; the cpu engine sizes its cache at run time "
                         "(caption --max-seq)")  # fmt: skip
    from .export.cpu_engine import build_cpu_engine

    m = build_cpu_engine(args.quantized, args.out, vision=args.vision, lm_head=args.lm_head, conv_mode=args.conv_mode,
                         overwrite=args.overwrite)  # fmt: skip
    llm, vision = m["llm"], m["vision"]
    print(f"wrote {args.out}: cpu engine, {llm['architecture']} {llm['layers']} layers, int4 g{llm['group_size']} "
          f"({m['memory']['weights_mb']} MB), lm_head {m['quantization']['lm_head']}, "
          f"vision {vision['precision'] if vision else 'none'}, conv mode {m['text']['conv_mode']}")  # fmt: skip
    return 0


def cmd_bench(args) -> int:
    from .atomic import write_text_atomic
    from .bench import BenchSettings, format_text, run_bench

    for name in ("prompt_len", "gen_len", "repeat"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or (args.bandwidth_gb_s is not None and args.bandwidth_gb_s <= 0):
        raise UsageError("--warmup must be 0 or more, --bandwidth-gb-s above 0")
    if engine_backend(args.engine) == "trt":
        from .runtime.trt import TrtEngine

        if args.threads or args.kernels:
            raise UsageError(f"{args.engine} is a TensorRT engine; --threads and --kernels set the cpu engine: drop them")
        engine = TrtEngine(args.engine)
    else:
        from .runtime.cpu import CpuEngine

        engine = CpuEngine(args.engine, threads=args.threads, kernels=args.kernels)
    if args.images and engine.vision is None:
        raise UsageError(f"{args.engine}: built without vision (--vision none); bench it with --images 0")
    settings = BenchSettings(args.prompt_len, args.gen_len, args.images, args.repeat, args.warmup)
    result = run_bench(engine, settings, args.bandwidth_gb_s)
    if args.out:
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.format == "json" else format_text(result))
    return 0


def cmd_bench_table(args) -> int:
    from .atomic import write_text_atomic
    from .bench_table import load_results, render_markdown, write_plot

    results = load_results(args.results)
    markdown = render_markdown(results)
    if args.plot:  # first: a missing matplotlib stops before any file is written
        bars = write_plot(results, args.plot)
        print(f"wrote {args.plot} ({bars} bars)", file=sys.stderr)
    if args.out:
        write_text_atomic(args.out, markdown)
        print(f"wrote {args.out} ({len(results)} results)", file=sys.stderr)
    else:
        print(markdown, end="")
    return 0


def cmd_plan(args) -> int:
    from .plan import format_plan, load_recipe, memory_plan
    from .targets import get_target

    target = get_target(args.target)
    if target.sm is None:
        raise UsageError("--target cpu: the cpu engine has no memory plan here; its weights_mb is in the engine's manifest")
    plan = memory_plan(load_recipe(args.recipe), target, args.group_size, args.images, args.max_seq_len, args.max_batch)
    if args.format == "json":
        print(json.dumps({"recipe": plan.recipe, "target": target.name, "max_batch": plan.max_batch,
                          "max_input_len": plan.max_input_len, "max_seq_len": plan.max_seq_len,
                          "max_multimodal_len": plan.max_multimodal_len, "parts_gb": plan.parts_gb,
                          "total_gb": round(plan.total_gb, 3), "usable_gb": target.usable_gb, "fits": plan.fits}, indent=2))  # fmt: skip
    else:
        print(format_plan(plan))
    return 0 if plan.fits else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vila-edge", description=__doc__)
    p.add_argument("--version", action="version", version=f"vila-edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("inspect", help="validate a checkpoint and show its shapes, projector and conv mode")
    q.add_argument("checkpoint")
    q.add_argument("--conv-mode", help="show this conv mode instead of the resolved one")
    q.add_argument("--projector-order", choices=("row", "column"), help="override the projector's token order")
    q.add_argument("--allow-pickle", action="store_true", help="accept pickle (.bin/.pt) weights; they can run code")
    q.add_argument("--format", choices=("text", "json"), default="text")
    q.set_defaults(func=cmd_inspect)

    q = sub.add_parser("demo-checkpoint", help="write the demo checkpoint (SmolLM2 + random vision tower)")
    q.add_argument("out")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_demo_checkpoint)

    d = SamplingParams()
    q = sub.add_parser("caption", help="answer a question about images or a video")
    q.add_argument("source", help="an engine folder (build-engine) or a VILA checkpoint folder")
    media = q.add_mutually_exclusive_group()
    media.add_argument("--image", nargs="+", metavar="PATH", help="one or more images, in prompt order")
    media.add_argument("--video", metavar="PATH", help="one question about N frames of a video (--num-frames)")
    media.add_argument("--source", dest="stream", metavar="SRC",
                       help="a caption per sampled frame of a camera (0, /dev/video0), a stream (rtsp://...), "
                       "a video file or an image folder")  # fmt: skip
    q.add_argument("--prompt", required=True, help="the question; <image> tags place the images, else they go first")
    q.add_argument("--every", type=int, default=1, help="--source: caption every Nth frame (default 1)")
    q.add_argument("--window", type=int, default=1, help="--source: the K most recent sampled frames in each prompt")
    q.add_argument("--max-captions", type=int, help="--source: stop after this many captions")
    q.add_argument("--fps", type=float, help="--source: caption at most F frames per second of the source (instead of --every)")
    q.add_argument("--realtime", action="store_true", help="--source FILE: play the file at its frame rate, dropping "
                   "frames that arrive while the model is busy, as a camera would")  # fmt: skip
    q.add_argument("--record", metavar="OUT.mp4", help="--source: save the video with the latest caption drawn over it "
                   "(and with --alert a clip around each alert, OUT.alert-001.mp4, ...)")  # fmt: skip
    q.add_argument("--alert", metavar="REGEX", help="--source: mark captions matching REGEX (case-insensitive)")
    q.add_argument("--reconnect-timeout", type=float, default=30.0, metavar="S",
                   help="--source rtsp://...: how long to keep reconnecting to a lost stream (default 30 s)")
    q.add_argument("--conv-mode", help="conversation template (default: the checkpoint's own)")
    q.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    q.add_argument("--temperature", type=float, default=d.temperature, help="0 is greedy")
    q.add_argument("--top-p", type=float, default=d.top_p)
    q.add_argument("--seed", type=int, default=d.seed, help="sampling seed")
    q.add_argument("--num-frames", type=int, help="frames sampled from --video (default: the config's)")
    q.add_argument("--backend", choices=("auto", "torch", "onnx", "cpu", "trt"), default="auto",
                   help="auto: the engine's own (cpu, or trt for a GPU target), torch for a checkpoint; onnx: a checkpoint's "
                        "W8A8 vision ONNX on ONNX Runtime with the LLM on torch")  # fmt: skip
    q.add_argument("--threads", type=int, help="cpu engine threads (default: the cores, at most 8)")
    q.add_argument("--kernels", help="cpu engine kernels to force (ref, avx2, avx512, avx512vnni, neon, neon-dotprod)")
    q.add_argument("--max-seq", type=int, help="cpu engine KV cache positions (default: the model's max length)")
    q.add_argument("--activations", choices=("int8", "fp32"), default="int8",
                   help="cpu engine: int8 blocks into the int4 linears (fast) or fp32 (exact with an fp16 lm_head; slower)")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    q.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                   help="auto: float16 on CUDA (as VILA), float32 on CPU")  # fmt: skip
    q.add_argument("--projector-order", choices=("row", "column"), help="override the projector's token order")
    q.add_argument("--allow-pickle", action="store_true", help="accept pickle (.bin/.pt) weights; they can run code")
    q.add_argument("--format", choices=("text", "jsonl"), default="text")
    q.set_defaults(func=cmd_caption)

    q = sub.add_parser("quantize", help="AWQ int4 quantization of the LLM (scale + clip search)")
    q.add_argument("source", help="a VILA checkpoint folder (fp16/bf16)")
    q.add_argument("-o", "--out", required=True, help="the quantized checkpoint folder to write")
    q.add_argument("--group-size", type=int, default=128, help="must divide every layer's in_features")
    q.add_argument("--w-bit", type=int, default=4, help="weight bits (4)")
    q.add_argument("--calib", default="self", metavar="self|text:FILE|media:PATH",
                   help="calibration: the model's own samples (default), a .txt/.jsonl file, or an image, "
                        "image folder or video captioned through the whole VLM")  # fmt: skip
    q.add_argument("--calib-media", metavar="PATH", help="short for --calib media:PATH")
    q.add_argument("--n-samples", type=int, default=16, help="calibration sequences")
    q.add_argument("--seqlen", type=int, default=512, help="tokens per calibration sequence")
    q.add_argument("--duo-scaling", action="store_true", help="AutoAWQ's scales from activation and weight means")
    q.add_argument("--no-clip", action="store_true", help="skip the clip search")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where each layer is searched")
    q.add_argument("--vision", choices=("w8a8", "fp16"), default="w8a8",
                   help="w8a8: also write vision/ (SmoothQuant + int8 Q/DQ ONNX); fp16: leave the tower alone")
    q.add_argument("--smooth-alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    q.add_argument("--vision-calib-method", choices=("max", "percentile", "entropy"), default="percentile")
    q.add_argument("--vision-calib-images", type=int, default=32)
    q.add_argument("--vision-weight-bits", type=int, choices=(7, 8), default=7,
                   help="7 keeps ONNX Runtime's int8 kernels exact on CPUs without VNNI; 8 for TensorRT only")
    q.add_argument("--eval-text", metavar="FILE", help="also report fp / RTN / AWQ perplexity on this text")
    q.add_argument("--eval-tokens", type=int, default=32768, help="tokens of --eval-text to score")
    q.add_argument("--shard-size", type=_size, default="5GB", help="largest safetensors shard (default 5GB)")
    q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    q.add_argument("--allow-pickle", action="store_true", help="accept pickle (.bin/.pt) weights; they can run code")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_quantize)

    q = sub.add_parser("eval-ppl", help="perplexity of fp, RTN int4 and (with --awq) AWQ int4 on a text file")
    q.add_argument("source", help="the fp checkpoint (or an AWQ one, scored alone)")
    q.add_argument("--text", required=True, help="a .txt or .jsonl file the quantizer did not calibrate on")
    q.add_argument("--awq", metavar="QUANT", help="the AWQ checkpoint quantized from SOURCE")
    q.add_argument("--group-size", type=int, help="RTN group size (default: --awq's, else 128)")
    q.add_argument("--max-tokens", type=int, default=32768)
    q.add_argument("--seqlen", type=int, default=1024, help="tokens per window")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    q.add_argument("--allow-pickle", action="store_true", help="accept pickle (.bin/.pt) weights; they can run code")
    q.add_argument("--format", choices=("text", "json"), default="text")
    q.set_defaults(func=cmd_eval_ppl)

    q = sub.add_parser("build-engine", help="a quantized checkpoint -> an engine folder for a target")
    q.add_argument("quantized", help="the AWQ checkpoint from vila-edge quantize (or, on the device, a GPU target's bundle)")
    q.add_argument("-o", "--out", required=True, help="the engine folder to write")
    q.add_argument("--target", choices=list(TARGETS), required=True,
                   help="cpu: laptops (C++ int4 engine + ONNX vision); the others: TensorRT-LLM + a TensorRT vision plan, "
                        "built on that device (elsewhere: a portable bundle, exit 3)")  # fmt: skip
    q.add_argument("--vision", choices=("w8a8", "fp16", "fp32", "none"), default="w8a8",
                   help="cpu: w8a8|fp32 ONNX; GPU: w8a8 (int8 Q/DQ plan) or fp16; none: text only")  # fmt: skip
    q.add_argument("--lm-head", choices=("int8", "fp16"), default="int8", help="lm_head precision on the cpu target")
    q.add_argument("--images", type=int, help="GPU: images per prompt the engine takes (default 1)")
    q.add_argument("--max-batch", type=int, help="GPU: default the target's (1 on Jetson)")
    q.add_argument("--max-input-len", type=int, help="GPU: prompt tokens, images included (default: the target's)")
    q.add_argument("--max-seq-len", type=int, help="GPU: prompt + answer tokens (default: the target's, within the model's)")
    q.add_argument("--dry-run", action="store_true", help="GPU: print the memory plan and the build steps; write nothing")
    q.add_argument("--conv-mode", help="conversation template to record (default: the checkpoint's own)")
    q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    q.set_defaults(func=cmd_build_engine)

    q = sub.add_parser("bench", help="TTFT, vision, prefill and decode speed of an engine, and decode's share of "
                                     "the memory-bandwidth ceiling")  # fmt: skip
    q.add_argument("engine", help="an engine folder from build-engine (cpu, or a TensorRT engine on its GPU)")
    q.add_argument("--prompt-len", type=int, default=128, help="text tokens in the prompt (images add theirs)")
    q.add_argument("--gen-len", type=int, default=64, help="tokens generated (no early stop on the cpu engine)")
    q.add_argument("--images", type=int, default=0, help="images in the prompt")
    q.add_argument("--repeat", type=int, default=3)
    q.add_argument("--warmup", type=int, default=1)
    q.add_argument("--threads", type=int, help="cpu engine: default the cores, at most 8")
    q.add_argument("--kernels", help="cpu engine: force a kernel table (see caption --kernels)")
    q.add_argument("--bandwidth-gb-s", type=float, metavar="GB_S",
                   help="memory bandwidth for the decode ceiling (default: measured on cpu, the target's peak on GPUs)")
    q.add_argument("-o", "--out", metavar="FILE", help="also write the result JSON here (bench-table reads it)")
    q.add_argument("--format", choices=("text", "json"), default="text")
    q.set_defaults(func=cmd_bench)

    q = sub.add_parser("bench-table", help="bench result JSONs -> markdown tables (decode tok/s, TTFT) and a plot")
    q.add_argument("results", nargs="+", metavar="RESULT", help="bench -o files, or folders of them")
    q.add_argument("-o", "--out", metavar="FILE", help="the markdown file to write (default: print it)")
    q.add_argument("--plot", metavar="PNG", help="also draw decode tok/s as a grouped bar chart")
    q.set_defaults(func=cmd_bench_table)

    q = sub.add_parser("plan", help="will a model fit a target? weights, KV cache, vision, activations, runtime")
    q.add_argument("--recipe", required=True, help="a recipes/ name (vila1.5-3b, vila1.5-13b, ...) or a .json path")
    q.add_argument("--target", choices=[t for t in TARGETS if t != "cpu"], required=True)
    q.add_argument("--max-seq-len", type=int, help="prompt + answer tokens (default: the target's)")
    q.add_argument("--max-batch", type=int, help="default: the target's (1 on Jetson)")
    q.add_argument("--images", type=int, default=1, help="images per prompt")
    q.add_argument("--group-size", type=int, default=128, help="AWQ group size")
    q.add_argument("--format", choices=("text", "json"), default="text")
    q.set_defaults(func=cmd_plan)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda msg, *a, **k: f"vila-edge {args.command}: warning: {msg}\n"
    try:
        return args.func(args)
    except VilaEdgeError as e:
        print(f"vila-edge {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"vila-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

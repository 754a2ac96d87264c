"""`vila-edge bench ENGINE`: TTFT, vision, prefill and decode speed of a cpu or TensorRT engine, as
llama-bench measures them (synthetic prompt of real text, a warm-up, fixed lengths, no early stop on the
cpu engine), with decode as a share of the memory-bandwidth ceiling and what the device was. No torch
on the cpu path."""

import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import __version__
from .bandwidth import choose_bandwidth, decode_ceiling, engine_bytes_per_token, engine_files_bytes, probe_bandwidth
from .caption import Captioner
from .device import JetsonMonitor, cpu_description, describe_device, process_gpu_memory_mb
from .errors import UsageError
from .formats import BENCH_FORMAT, BENCH_FORMAT_VERSION
from .generate import SamplingParams, token_stream
from .scenes import draw_scene
from .targets import get_target


@dataclass
class BenchSettings:
    prompt_len: int = 128  # text tokens; images add their own
    gen_len: int = 64
    images: int = 0
    repeat: int = 3
    warmup: int = 1
    image_size: str = "480x480"  # WxH of the drawn scenes (a tiling model cuts a wide one into more tiles)
    max_tiles: int | None = None  # NVILA: as caption --max-tiles

    @property
    def image_wh(self) -> tuple[int, int]:
        parts = self.image_size.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) <= 8192 for p in parts):
            raise UsageError(f"--image-size {self.image_size!r}: WIDTHxHEIGHT in pixels, e.g. 1344x896")
        return int(parts[0]), int(parts[1])

    def check(self) -> None:
        self.image_wh  # validates --image-size
        for name in ("prompt_len", "gen_len", "repeat"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("warmup", "images"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name} must be 0 or more")


def prompt_ids(captioner: Captioner, n_text: int, n_images: int, tiles: list[int] | None = None) -> list[int]:
    """A chat prompt holding n_images images (NVILA-Lite: `tiles` places each) and exactly n_text text tokens."""
    from .corpus import stdlib_docs

    words = " ".join(stdlib_docs("eval")).split()[: 2 * n_text + 64]  # enough: a word is at least one token
    n_places = sum(k or 1 for k in tiles or [0] * n_images)
    encode = lambda text: captioner.prompt_ids(text, n_images, tiles)  # noqa: E731
    base = len(encode("")) - n_places
    if n_text < base + 1:
        raise UsageError(f"--prompt-len {n_text}: the template alone takes {base} tokens; ask for more")
    lo, hi = 1, len(words)
    while lo < hi:  # the longest question whose prompt fits n_text tokens
        mid = (lo + hi + 1) // 2
        if len(encode(" ".join(words[:mid]))) - n_places <= n_text:
            lo = mid
        else:
            hi = mid - 1
    ids = encode(" ".join(words[:lo]))
    filler = captioner.tokenizer(" the", add_special_tokens=False).input_ids[-1]
    mid = len(ids) // 2  # inside the question: pad to the exact length
    return ids[:mid] + [filler] * (n_text - (len(ids) - n_places)) + ids[mid:]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def timed_run(engine, captioner: Captioner, ids: list[int], images: list, gen_len: int, monitor: JetsonMonitor) -> dict:
    """One prompt, greedy: vision (tiled as captioning tiles), then the token stream (our sampler over the cpu
    engine's logits, or TensorRT-LLM's own stream). TTFT is the first token; decode is the rest, power sampled meanwhile."""
    t0 = time.perf_counter()
    embeds = captioner.encode(images).blocks
    t1 = time.perf_counter()
    inputs = engine.splice(ids, embeds)
    params = SamplingParams(temperature=0.0, max_new_tokens=gen_len)
    stream = token_stream(engine, inputs, params)
    stamps = []
    for _ in zip(range(gen_len), stream):  # range first: no decode step past gen_len
        stamps.append(time.perf_counter())
        if len(stamps) == 1:
            monitor.start()
    monitor.stop()
    stream.close()
    return {"vision_s": t1 - t0, "ttft_s": stamps[0] - t0, "prefill_s": stamps[0] - t1,
            "decode_s": stamps[-1] - stamps[0], "decode_tokens": len(stamps) - 1, "prompt_tokens": len(inputs)}


def weight_precision(manifest: dict) -> str:
    """The LLM's weight quantization, e.g. 'AWQ int4 g128': what a table row compares across devices."""
    q = manifest["quantization"]
    return f"{q.get('method', 'awq').upper()} int{q.get('w_bit', 4)} g{q['group_size']}"


def precision(manifest: dict) -> str:
    """Everything the engine runs at, e.g. 'w4a8 g64, lm_head int8, vision w8a8'."""
    q = manifest["quantization"]
    acts = "a8" if manifest["target"] == "cpu" else "a16"  # the cpu engine quantizes activations to int8 on the fly
    vision = (manifest.get("vision") or {}).get("precision", "none")
    return f"w{q.get('w_bit', 4)}{acts} g{q['group_size']}, lm_head {q['lm_head']}, vision {vision}"


def weights_mb(engine) -> float:
    memory = engine.manifest.get("memory") or {}
    if "weights_mb" in memory:
        return memory["weights_mb"]
    return round(engine_files_bytes(engine.root / engine.manifest["llm"]["engine_dir"]) / 2**20, 1)


def measure(engine, settings: BenchSettings) -> tuple[list[dict], dict, str | None, dict]:
    """(the timed runs after the warm-up, the device they ran on, the Jetson power mode or None, what the images
    cost: tower passes (tiles) per image and image tokens, as captioning tiles them)."""
    if hasattr(engine, "prefix_reuse"):  # a cold prompt each run: the runs repeat one prompt, which would be reused
        engine.prefix_reuse = False
    captioner = Captioner(engine.info, engine, max_tiles=settings.max_tiles)
    images = scenes(settings)
    encoded = captioner.encode(images)
    cost = {"tiles_per_image": encoded.tower_passes / settings.images if images else 0,
            "image_tokens": sum(len(b) for b in encoded.blocks) if images else 0}
    ids = prompt_ids(captioner, settings.prompt_len, settings.images, encoded.tiles_per_image)
    with JetsonMonitor() as monitor:
        runs = []
        for i in range(settings.warmup + settings.repeat):
            run = timed_run(engine, captioner, ids, images, settings.gen_len, monitor)
            if i < settings.warmup:
                monitor.samples.clear()
            else:
                runs.append(run)
        decode_s, decoded = sum(r["decode_s"] for r in runs), sum(r["decode_tokens"] for r in runs)
        return runs, describe_device(monitor, decode_s, decoded), monitor.nvpmodel, cost


def scenes(settings: BenchSettings) -> list:
    w, h = settings.image_wh
    return [draw_scene(max(w, h), seed=i).resize((w, h)) for i in range(settings.images)]


def speeds(runs: list[dict], images: int) -> dict:
    """TTFT (mean, median, p90), vision per image, prefill and decode tok/s (medians) over the runs."""
    ttft = [r["ttft_s"] for r in runs]
    decode_tok_s = [r["decode_tokens"] / r["decode_s"] for r in runs if r["decode_tokens"] and r["decode_s"] > 0]
    return {
        "ttft_s": statistics.mean(ttft),
        "ttft_median_s": statistics.median(ttft),
        "ttft_p90_s": _percentile(ttft, 90),
        "vision_ms": 1e3 * statistics.mean(r["vision_s"] for r in runs) / images if images else None,
        "prefill_tok_s": statistics.median(r["prompt_tokens"] / r["prefill_s"] for r in runs),
        "decode_tok_s": statistics.median(decode_tok_s) if decode_tok_s else None,
    }


def run_bench(engine, settings: BenchSettings, bandwidth_gb_s: float | None = None) -> dict:
    """engine: a CpuEngine or a TrtEngine. The result is one JSON-able record (bench-table reads them)."""
    manifest, threads = engine.manifest, getattr(engine, "threads", None)
    target = get_target(manifest["target"])
    probe = not bandwidth_gb_s and not target.bandwidth_gb_s  # the cpu target: probed on the engine's threads
    before = probe_bandwidth(threads or os.cpu_count()) if probe else None
    runs, device, nvpmodel, cost = measure(engine, settings)
    probes = [before, probe_bandwidth(threads or os.cpu_count())] if probe else None
    bandwidth = choose_bandwidth(target, bandwidth_gb_s, threads or os.cpu_count(), nvpmodel, probes)
    speed = speeds(runs, settings.images)
    tiles = cost["tiles_per_image"] * settings.images
    context = runs[0]["prompt_tokens"] + settings.gen_len / 2  # the mean cache length while decoding
    per_token = engine_bytes_per_token(engine.root, manifest, context, getattr(engine, "kv_item_bytes", 4))
    return {
        "format": BENCH_FORMAT,
        "format_version": BENCH_FORMAT_VERSION,
        "model": manifest["source"]["name"],
        "engine": str(engine.root),
        "target": target.name,
        "backend": "trt" if target.is_gpu else "cpu",
        "weights": weight_precision(manifest),
        "precision": precision(manifest),
        "prompt_tokens": runs[0]["prompt_tokens"],
        "text_tokens": settings.prompt_len,
        "images": settings.images,
        "image_size": settings.image_size if settings.images else None,
        "max_tiles": engine.info.vision_layout.with_max_tiles(settings.max_tiles).max_tiles
        if engine.info.vision_layout.mode.startswith("dynamic") else None,
        **cost,
        "gen_len": settings.gen_len,
        "decode_tokens": min(r["decode_tokens"] for r in runs),
        "repeat": settings.repeat,
        "warmup": settings.warmup,
        **runner(engine),
        **speed,
        "vision_ms_per_tile": speed["vision_ms"] * settings.images / tiles if tiles else None,
        **bandwidth,
        **decode_ceiling(speed["decode_tok_s"], bandwidth["bandwidth_gb_s"], per_token, bandwidth["bandwidth_source"]),
        "peak_rss_mb": peak_rss_mb(),
        "gpu_memory_mb": process_gpu_memory_mb() if target.is_gpu else None,
        "weights_mb": weights_mb(engine),
        "cpu": cpu_description(),
        "device": device,
        "runs": [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
        "vila_edge": __version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def runner(engine) -> dict:
    """What runs a cpu engine: threads, kernel table, KV cache storage, vision tower (native: our kernels, or ort)."""
    return {"threads": getattr(engine, "threads", None), "kernels": getattr(engine, "kernels", None),
            "kv_cache": getattr(engine, "kv_cache", "fp16"), "vision_backend": getattr(engine, "vision_backend", None)}


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def device_line(r: dict) -> str:
    d = r.get("device") or {}
    parts = [r["cpu"]]
    if d.get("gpu"):
        parts.append(d["gpu"]["name"])
    if d.get("jetson"):
        j = d["jetson"]
        parts.append(f"{j['board']}, nvpmodel {j['nvpmodel']}, jetson_clocks {'on' if j['jetson_clocks'] else 'off'}")
    return "; ".join(parts)


def format_text(r: dict) -> str:
    vision = f", vision {r['vision_ms']:.1f} ms/image" if r["vision_ms"] is not None else ""
    if vision and r.get("vision_backend"):
        vision += f" ({'our int8 kernels' if r['vision_backend'] == 'native' else 'ONNX Runtime'})"
    if r.get("tiles_per_image", 1) > 1:
        vision += (f" ({r['tiles_per_image']:g} tiles per image, {r['vision_ms_per_tile']:.1f} ms/tile, "
                   f"{r['image_tokens']} image tokens)")
    threads = f"{r['threads']} thread{'' if r['threads'] == 1 else 's'}"
    runner = f"{threads}, {r['kernels']} kernels" if r["backend"] == "cpu" else "TensorRT"
    lines = [
        f"{r['model']} [{r['precision']}], {r['target']} engine ({runner})",
        f"  on {device_line(r)}",
        f"  prompt {r['prompt_tokens']} tokens ({r['images']} image{'' if r['images'] == 1 else 's'}){vision}",
        f"  TTFT {r['ttft_s'] * 1e3:.1f} ms (median {r['ttft_median_s'] * 1e3:.1f}, p90 {r['ttft_p90_s'] * 1e3:.1f})",
    ]
    if r["decode_tok_s"] is None:
        lines.append(f"  prefill {r['prefill_tok_s']:.1f} tok/s; no decode (--gen-len 1)")
    else:
        lines += [
            f"  prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s over {r['decode_tokens']} tokens",
            (f"  decode at {r['decode_pct_of_ceiling']:.0f}% of the bandwidth ceiling" if r["decode_pct_of_ceiling"] is not None
             else f"  decode share of the ceiling not given: {r['ceiling_note']}")
            + f", ceiling {r['decode_ceiling_tok_s']:.1f} tok/s = {r['bandwidth_gb_s']} GB/s ({r['bandwidth_source']}) / "
              f"{r['bytes_per_token_mb']:.1f} MB per token",
        ]
    gpu = f", GPU {r['gpu_memory_mb']:.0f} MB" if r.get("gpu_memory_mb") is not None else ""
    lines.append(f"  peak RSS {r['peak_rss_mb']:.0f} MB{gpu}")
    jetson = (r.get("device") or {}).get("jetson")
    if jetson and jetson["power_total_mw"] is not None:
        energy = f", {jetson['energy_per_token_mj']:.1f} mJ per token" if jetson["energy_per_token_mj"] else ""
        lines.append(f"  power {jetson['power_total_mw'] / 1e3:.2f} W while decoding{energy}")
    return "\n".join(lines)

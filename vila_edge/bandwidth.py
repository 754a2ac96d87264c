"""Batch-1 decode is memory-bound: each token reads every weight once, plus the KV cache. So
decode tok/s <= bandwidth / bytes per token; this module gives both sides of that ceiling.
MB and GB are decimal (1e6, 1e9), as bandwidth figures are."""

from pathlib import Path

from .safetensors_header import read_header
from .targets import Target

READ_MB, READ_REPEAT = 1024, 5  # the buffer _runtime.read_bandwidth streams: far beyond any CPU cache
SUPER_MODES = ("25W",)  # Orin Nano nvpmodel modes that raise the memory clock (besides MAXN_SUPER)


def kv_bytes(spec: dict, context: float, item_bytes: int) -> float:
    """K and V of every layer, read once per decoded token at `context` cached positions."""
    return 2 * spec["layers"] * spec["kv_heads"] * spec["head_dim"] * item_bytes * context


def safetensors_bytes_per_token(path: Path, spec: dict, context: float, kv_item_bytes: float = 4) -> int:
    """A cpu engine's llm.safetensors: every tensor but the embedding table, one row of it, and the KV cache
    at kv_item_bytes per value (fp32 4, fp16 2, int8 1 + 2/32 with its scales)."""
    header = read_header(path)
    size = {name: t["data_offsets"][1] - t["data_offsets"][0] for name, t in header.items()}
    embed_row = size["embed"] // header["embed"]["shape"][0]
    return int(sum(size.values()) - size["embed"] + embed_row + kv_bytes(spec, context, kv_item_bytes))


def engine_files_bytes(engine_dir: Path) -> int:
    """The size of a TensorRT-LLM engine's serialized rank files."""
    return sum(f.stat().st_size for f in Path(engine_dir).glob("*.engine"))


def trt_bytes_per_token(engine_dir: Path, spec: dict, context: float) -> int:
    """A TensorRT-LLM engine: its serialized engine files (the weights, plus a little kernel code) less the
    fp16 embedding table, one row of it, and the fp16 KV cache. An estimate: the files are not weights alone."""
    table = 2 * spec["vocab"] * spec["hidden"]
    return int(engine_files_bytes(engine_dir) - table + 2 * spec["hidden"] + kv_bytes(spec, context, 2))


def engine_bytes_per_token(root: Path, manifest: dict, context: float, kv_item_bytes: float = 4) -> int:
    """kv_item_bytes: the cpu engine's cache type (a TensorRT engine's cache is fp16)."""
    spec = manifest["llm"]
    if manifest["target"] == "cpu":
        return safetensors_bytes_per_token(Path(root) / spec["file"], spec, context, kv_item_bytes)
    return trt_bytes_per_token(Path(root) / spec["engine_dir"], spec, context)


def is_super_mode(nvpmodel: str | None) -> bool:
    return bool(nvpmodel) and ("SUPER" in nvpmodel.upper() or nvpmodel.upper() in SUPER_MODES)


def probe_bandwidth(threads: int) -> float:
    """GB/s of streaming reads on `threads` threads (the engine's own), through a buffer beyond any cache."""
    from . import _runtime

    return round(_runtime.read_bandwidth(READ_MB, threads, READ_REPEAT), 2)


def choose_bandwidth(target: Target, given: float | None, threads: int, nvpmodel: str | None = None,
                     probes: list[float] | None = None) -> dict:
    """{bandwidth_gb_s, bandwidth_source, bandwidth_note}: given on the command line; measured on the cpu target
    (the higher of `probes`, streaming reads on the bench's threads just before and after the decode, since a probe
    that shares the cores with other work reads low; one probed now without them); else the target's peak figure."""
    if given:
        return {"bandwidth_gb_s": given, "bandwidth_source": "given", "bandwidth_note": "--bandwidth-gb-s"}
    if not target.bandwidth_gb_s:
        probes = probes or [probe_bandwidth(threads)]
        return {"bandwidth_gb_s": max(probes), "bandwidth_source": "measured", "bandwidth_probes_gb_s": probes,
                "bandwidth_note": f"read_bandwidth: {READ_MB} MB read {READ_REPEAT} times on {threads} threads, "
                                  f"the higher of {len(probes)} probe{'s' if len(probes) > 1 else ''} (before and after)"}
    note = f"{target.description} peak"
    if target.super_bandwidth_gb_s:
        if is_super_mode(nvpmodel):
            return {"bandwidth_gb_s": target.super_bandwidth_gb_s, "bandwidth_source": "target",
                    "bandwidth_note": f"{note} in Super mode (nvpmodel {nvpmodel})"}
        note += f"; {target.super_bandwidth_gb_s} GB/s in Super mode (JetPack 6.1+, 25W or MAXN_SUPER)"
    return {"bandwidth_gb_s": target.bandwidth_gb_s, "bandwidth_source": "target", "bandwidth_note": note}


def ceiling_tok_s(gb_s: float, bytes_per_token: float) -> float:
    return gb_s * 1e9 / bytes_per_token


def decode_ceiling(decode_tok_s: float | None, gb_s: float, bytes_per_token: int, source: str = "measured") -> dict:
    """The ceiling and decode's share of it; a decode above its ceiling says the ceiling is wrong (a probe disturbed
    by other work on the machine, or a figure given too low), so no share above 100 % is reported."""
    limit = ceiling_tok_s(gb_s, bytes_per_token)
    pct = round(100 * decode_tok_s / limit, 1) if decode_tok_s else None
    note = None
    if pct is not None and pct > 100:
        note = (f"decode ran at {pct:.0f} % of this ceiling: the bandwidth probe was disturbed (the machine was busy); "
                "rerun on an idle machine or pass --bandwidth-gb-s" if source == "measured" else
                f"decode ran at {pct:.0f} % of this ceiling: the {source} bandwidth is below what this device reads")
        pct = None
    return {
        "bytes_per_token_mb": round(bytes_per_token / 1e6, 3),
        "decode_ceiling_tok_s": round(limit, 1),
        "decode_pct_of_ceiling": pct,
        "ceiling_note": note,
    }

"""`vila-edge bench-table RESULT...`: bench result JSONs -> the published table layout (rows: model and
weight precision; columns: devices) for decode tok/s, decode's share of the bandwidth ceiling and TTFT,
plus a grouped bar chart of decode tok/s. What each device's engine runs at beyond the weights (int8 or
fp16 activations, lm_head, vision) is listed under the tables.

When several results fall in one cell the latest (by its `time`) wins: a re-run replaces the number it
re-measures, so a regression shows instead of hiding behind a best-of."""

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .atomic import atomic_file
from .errors import UnsupportedError, UsageError
from .formats import BENCH_FORMAT, BENCH_FORMAT_VERSION
from .targets import TARGETS

REQUIRED = ("model", "weights", "precision", "target", "threads", "text_tokens", "images", "gen_len", "repeat", "warmup",
            "ttft_s", "decode_tok_s", "decode_pct_of_ceiling", "bandwidth_gb_s", "bandwidth_source", "device", "time")
MISSING = "–"


# ---- reading --------------------------------------------------------------------------------------


def _read(path: Path) -> dict | None:
    """The JSON in `path` if it is a bench result, else None; a bench result with fields missing is an error."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != BENCH_FORMAT:
        return None
    if data.get("format_version") != BENCH_FORMAT_VERSION:
        raise UsageError(f"{path}: bench result format {data.get('format_version')}, this bench-table reads "
                         f"{BENCH_FORMAT_VERSION}; re-run vila-edge bench -o {path.name} with this version")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise UsageError(f"{path}: bench result without {', '.join(missing)}; re-run vila-edge bench -o {path.name}")
    return data


def load_results(paths: list[str | Path]) -> list[dict]:
    """Bench results from files and folders (their *.json, in name order; other JSON there is skipped)."""
    results = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [r for r in (_read(f) for f in sorted(p.glob("*.json"))) if r is not None]
            if not found:
                raise UsageError(f"{p}: no bench results in this folder (write them with vila-edge bench ENGINE -o FILE)")
            results += found
        elif p.is_file():
            r = _read(p)
            if r is None:
                raise UsageError(f"{p}: not a vila-edge bench result (write one with vila-edge bench ENGINE -o FILE)")
            results.append(r)
        else:
            raise UsageError(f"{p}: no such file or folder")
    return results


# ---- the table ------------------------------------------------------------------------------------


def device_label(r: dict) -> str:
    """'cpu: AMD EPYC 7B13 (2 threads)', 'orin-nano: Jetson Orin Nano 8 GB (MAXN)', 'h100: NVIDIA H100 80GB HBM3'."""
    target, device = r["target"], r["device"]
    known = TARGETS.get(target)
    if target == "cpu":
        return f"cpu: {device['cpu']['model']} ({r['threads']} thread{'' if r['threads'] == 1 else 's'})"
    if known is not None and known.jetson:
        mode = (device.get("jetson") or {}).get("nvpmodel")
        return f"{target}: {known.description}" + (f" ({mode})" if mode else "")
    if device.get("gpu"):
        return f"{target}: {device['gpu']['name']}"
    return f"{target}: {known.description if known else 'unknown device'}"


def settings_text(r: dict) -> str:
    images = f" + {r['images']} image{'s' if r['images'] != 1 else ''}" if r["images"] else ""
    return (f"prompt {r['text_tokens']} text tokens{images}, {r['gen_len']} generated tokens, "
            f"{r['repeat']} repeats after {r['warmup']} warm-up")


def _when(r: dict) -> datetime:
    try:
        return datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%S%z")
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=timezone.utc)


@dataclass
class Table:
    rows: list[tuple[str, str]] = field(default_factory=list)  # (model, weight precision)
    columns: list[str] = field(default_factory=list)  # device labels
    cells: dict[tuple[tuple[str, str], str], dict] = field(default_factory=dict)  # the result shown there


def build_table(results: list[dict]) -> Table:
    """Rows and columns in order of first appearance; in a shared cell the latest result."""
    t = Table()
    for r in results:
        row, col = (r["model"], r["weights"]), device_label(r)
        if row not in t.rows:
            t.rows.append(row)
        if col not in t.columns:
            t.columns.append(col)
        held = t.cells.get((row, col))
        if held is None or _when(r) >= _when(held):
            t.cells[row, col] = r
    return t


def _grid(t: Table, title: str, cell) -> list[str]:
    lines = [f"### {title}", "", "| model | weights | " + " | ".join(t.columns) + " |",
             "|---|---|" + "---:|" * len(t.columns)]
    for row in t.rows:
        values = []
        for col in t.columns:
            r = t.cells.get((row, col))
            value = None if r is None else cell(r)
            values.append(MISSING if value is None else value)
        lines.append(f"| {row[0]} | {row[1]} | " + " | ".join(values) + " |")
    return lines + [""]


def _number(key: str, fmt: str, scale: float = 1.0):
    return lambda r: None if r[key] is None else format(r[key] * scale, fmt)


def _devices(t: Table) -> list[str]:
    """Per column, what its cells were measured against and run at (distinct values joined)."""
    lines = ["### Devices", "", "| device | bandwidth | engine |", "|---|---|---|"]
    for col in t.columns:
        shown = [r for (_, c), r in t.cells.items() if c == col]
        bandwidth = dict.fromkeys(f"{r['bandwidth_gb_s']:g} GB/s ({r['bandwidth_source']})" for r in shown)
        engines = dict.fromkeys(r["precision"] for r in shown)
        lines.append(f"| {col} | {' / '.join(bandwidth)} | {' / '.join(engines)} |")
    return lines + [""]


def render_markdown(results: list[dict]) -> str:
    t = build_table(results)
    lines = _grid(t, "Decode (tokens/s, batch 1)", _number("decode_tok_s", ".1f"))
    lines += _grid(t, "Decode, % of the memory-bandwidth ceiling", lambda r: None if r["decode_pct_of_ceiling"] is None
                   else f"{r['decode_pct_of_ceiling']:.0f}%")
    lines += _grid(t, "Time to first token (ms, mean)", _number("ttft_s", ".0f", 1e3))
    lines += _devices(t)
    lines += ["Ceiling: memory bandwidth / the bytes a decoded token reads (every weight but the embedding table, "
              "plus the KV cache). Decode and prefill are medians over the repeats, TTFT the mean.", ""]
    settings = dict.fromkeys(settings_text(r) for r in t.cells.values())
    if len(settings) == 1:
        lines.append(f"Settings: {next(iter(settings))}.")
    else:
        lines.append("Settings differ between cells:")
        lines += [f"- {row[0]} ({row[1]}) on {col}: {settings_text(r)}" for (row, col), r in t.cells.items()]
    return "\n".join(lines) + "\n"


# ---- the plot -------------------------------------------------------------------------------------


def decode_figure(results: list[dict]):
    """A matplotlib Figure (no pyplot, no screen): one group of bars per model row, one bar per device."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UnsupportedError("--plot needs matplotlib: pip install 'vila-edge[plot]' (or pip install matplotlib)") from None
    t = build_table(results)
    fig = Figure(figsize=(max(6.0, 1.2 + 0.9 * len(t.rows) * max(1, len(t.columns))), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(t.columns))
    for j, col in enumerate(t.columns):
        xs, ys = [], []
        for i, row in enumerate(t.rows):
            r = t.cells.get((row, col))
            if r is not None and r["decode_tok_s"] is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(r["decode_tok_s"])
        bars = ax.bar(xs, ys, width, label=col)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(t.rows)), [f"{m}\n{p}" for m, p in t.rows], fontsize=8)
    top = max((r["decode_tok_s"] or 0 for r in t.cells.values()), default=0)
    ax.set_ylim(0, 1.3 * top or 1)  # headroom: the legend sits above the bars
    ax.set_ylabel("decode tokens/s (batch 1)")
    ax.set_title("vila-edge bench: decode speed")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def write_plot(results: list[dict], out: str | Path) -> int:
    """Writes the PNG atomically; returns the number of bars drawn."""
    fig = decode_figure(results)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return len(fig.axes[0].patches)

"""What a benchmark ran on: the CPU, the GPU (through nvidia-smi) and, on a Jetson with jetson-stats,
the power mode, jetson_clocks and the power rails sampled while decoding. No torch."""

import os
import platform
import re
import shutil
import statistics
import subprocess
from pathlib import Path

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
GPU_FIELDS = ("name", "memory.total", "memory.used", "driver_version")
JTOP_INTERVAL_S = 0.5


def cpu_info() -> dict:
    from . import _runtime

    return {"model": _runtime.cpu_name(), "logical_cpus": os.cpu_count(), "arch": platform.machine()}


def cpu_description() -> str:
    """The CPU as one line, e.g. 'AMD EPYC (2 logical CPUs, x86_64)'."""
    cpu = cpu_info()
    return f"{cpu['model']} ({cpu['logical_cpus']} logical CPUs, {cpu['arch']})"


def l4t_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.0, GCID: ...' (/etc/nv_tegra_release) -> '36.4.0'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def jetpack_release() -> str | None:
    if not shutil.which("dpkg-query"):
        return None
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return out.stdout.split("+")[0].strip() or None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]" (Jetson's nvidia-smi) or "[Not Supported]"
        return None


def _nvidia_smi(*args: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_gpu_csv(text: str) -> list[dict]:
    """`nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == len(GPU_FIELDS):
            name, total, used, driver = cells
            gpus.append({"name": name, "memory_total_mb": _number(total), "memory_used_mb": _number(used), "driver": driver})
    return gpus


def gpu_info() -> dict | None:
    """The first GPU nvidia-smi lists (memory as the whole device uses it now), or None without one."""
    out = _nvidia_smi(f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader,nounits")
    gpus = parse_gpu_csv(out) if out else []
    return gpus[0] if gpus else None


def process_gpu_memory_mb(pid: int | None = None) -> float | None:
    """This process's GPU memory as nvidia-smi reports it; None where it does not (no GPU, Jetson)."""
    out = _nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    pid = os.getpid() if pid is None else pid
    for line in (out or "").strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == 2 and cells[0] == str(pid):
            return _number(cells[1])
    return None


class JetsonMonitor:
    """jtop (jetson-stats) in the background while a benchmark runs: power samples are kept between
    start() and stop() (the decode phases); elsewhere, or without jtop, it only says why not."""

    def __init__(self):
        self.jetson, self.samples, self.sampling, self.taken = None, [], False, 0
        self.note = None

    def __enter__(self):
        if not TEGRA_RELEASE.is_file():
            self.note = f"not a Jetson ({TEGRA_RELEASE} is absent)"
            return self
        try:
            from jtop import jtop
        except ImportError:
            self.note = "jetson-stats is not installed (sudo pip3 install -U jetson-stats): no power mode or power rails"
            return self
        try:
            jetson = jtop(interval=JTOP_INTERVAL_S)
            jetson.attach(self._observe)
            jetson.start()
            jetson.ok()  # waits for the first reading
            self.jetson = jetson
        except Exception as e:  # JtopException, or the jtop.service socket refused
            self.note = f"jtop did not start ({type(e).__name__}: {e}); is jtop.service running?"
        return self

    def __exit__(self, *exc):
        if self.jetson is not None:
            self.jetson.close()

    @staticmethod
    def _reading(jetson) -> dict:
        power = jetson.power
        return {"rails": {name: rail["power"] for name, rail in power["rail"].items()}, "total": power["tot"]["power"]}

    def _observe(self, jetson) -> None:  # called from jtop's thread at each reading
        if self.sampling:
            self.samples.append(self._reading(jetson))
            self.taken += 1

    def start(self) -> None:
        self.taken, self.sampling = 0, self.jetson is not None

    def stop(self) -> None:
        self.sampling = False
        if self.jetson is not None and not self.taken:  # a decode shorter than jtop's interval: read once now
            self.samples.append(self._reading(self.jetson))

    @property
    def nvpmodel(self) -> str | None:
        return self.jetson.nvpmodel.name if self.jetson is not None and self.jetson.nvpmodel is not None else None

    def describe(self, decode_s: float, decode_tokens: int) -> dict | None:
        """Power mode, clocks, mean power per rail over the decode samples, and energy per decoded token
        (mean total power x decode time / tokens)."""
        if self.jetson is None:
            return None
        hardware = self.jetson.board.get("hardware", {})
        clocks = self.jetson.jetson_clocks
        rails = {name: round(statistics.mean(s["rails"][name] for s in self.samples if name in s["rails"]))
                 for name in (self.samples[0]["rails"] if self.samples else {})}
        total = statistics.mean(s["total"] for s in self.samples) if self.samples else None
        return {
            "board": hardware.get("Module") or hardware.get("Model"),
            "l4t": hardware.get("L4T") or l4t_release(TEGRA_RELEASE.read_text(errors="replace")),
            "jetpack": hardware.get("Jetpack"),
            "nvpmodel": self.nvpmodel,
            "jetson_clocks": None if clocks is None else bool(clocks),
            "power_samples": len(self.samples),
            "power_mw": rails,
            "power_total_mw": None if total is None else round(total),
            "energy_per_token_mj": round(total * decode_s / decode_tokens, 2) if total and decode_tokens else None,
        }


def describe_device(monitor: JetsonMonitor, decode_s: float, decode_tokens: int) -> dict:
    return {"cpu": cpu_info(), "gpu": gpu_info(), "jetson": monitor.describe(decode_s, decode_tokens),
            "jetson_note": monitor.note}

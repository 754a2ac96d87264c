"""`vila-edge serve` against the engine called directly, in one run: latency (TTFT p50/p90, total) and throughput
at concurrency 1, 4 and 16, the same questions (an image + "Describe the image.", greedy, 32 tokens) both ways.

Server: `vila-edge serve ENGINE` in its own process (uvicorn on 127.0.0.1), clients with the `openai` SDK,
streaming, TTFT = the first content chunk. Direct: a Captioner over the same engine in this process, the callers
taking turns on a lock (as the server's worker FIFO serializes them), TTFT from the answer. The server's overhead
is its mean total time at concurrency 1 over the direct call's; the issue asks for under 5 % on the demo engine.

    .venv/bin/python benchmarks/serve.py [--engine demo/vila-demo-cpu] [--threads 2]
    # -> benchmarks/results/serve.json; needs `make demo` first (the demo engine)
"""

import argparse
import base64
import io
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from vila_edge.atomic import write_text_atomic
from vila_edge.caption import Captioner
from vila_edge.device import cpu_description
from vila_edge.generate import SamplingParams
from vila_edge.runtime.cpu import CpuEngine

HERE = Path(__file__).parent
QUESTION, TOKENS = "Describe the image.", 32
REQUESTS = {1: 8, 4: 16, 16: 32}  # concurrency -> requests


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def summary(runs: list[tuple[float, float]], wall: float) -> dict:
    ttft, total = [r[0] for r in runs], [r[1] for r in runs]
    return {"requests": len(runs), "ttft_p50_s": round(pct(ttft, 0.5), 4), "ttft_p90_s": round(pct(ttft, 0.9), 4),
            "total_mean_s": round(statistics.mean(total), 4), "total_p90_s": round(pct(total, 0.9), 4),
            "throughput_req_s": round(len(runs) / wall, 3)}


def direct_runs(engine_dir: Path, threads: int, image: Image.Image, concurrency: int, n: int) -> dict:
    engine = CpuEngine(engine_dir, threads=threads)
    captioner, lock = Captioner(engine.info, engine), threading.Lock()

    def one(_):  # (TTFT as this caller sees it: its wait for the engine, then the answer's own; its total)
        t0 = time.perf_counter()
        with lock:
            waited = time.perf_counter() - t0
            answer = captioner([image], QUESTION, SamplingParams(max_new_tokens=TOKENS))
        return waited + answer.ttft_s, time.perf_counter() - t0

    one(0)  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, range(n)))
    return summary(done, time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_runs(url: str, image_url: str, concurrency: int, n: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                             {"type": "text", "text": QUESTION}]}]

    def one(_):
        t0, first = time.perf_counter(), None
        for chunk in client.chat.completions.create(model="m", messages=messages, max_tokens=TOKENS, stream=True):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
        return first or time.perf_counter() - t0, time.perf_counter() - t0

    one(0)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, range(n)))
    return summary(done, time.perf_counter() - start)


def with_alerts(url: str, image_url: str, clip: Path, n: int) -> dict:
    """Concurrency-1 chat while two rules are evaluated every second on `clip` played as a live stream."""
    import httpx

    stream = httpx.post(f"{url}/api/v1/live-stream", json={"liveStreamUrl": str(clip)}).json()["id"]
    httpx.post(f"{url}/api/v1/alerts", json={"alerts": ["Is there a person?", "Is there a house?"], "id": stream})
    time.sleep(3)  # the rules under way
    chat = server_runs(url, image_url, 1, n)
    rules = httpx.get(f"{url}/api/v1/alerts").json()
    httpx.delete(f"{url}/api/v1/live-stream/{stream}")
    return {"chat": chat, "rule_evaluations": sum(r["evaluations"] for r in rules["alerts"]),
            "skipped_evaluations": rules["skipped_evaluations"]}


def start_server(engine: Path, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vila_edge.cli", "serve", str(engine), "--port", str(port),
                             "--threads", str(threads), "--max-queue", "64", "--alert-interval", "1"],
                            stdout=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit("vila-edge serve did not start")
            time.sleep(0.2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="demo/vila-demo-cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    engine = Path(args.engine)
    if not (engine / "manifest.json").is_file():
        raise SystemExit(f"{engine}: no engine; run `make demo` first (it builds demo/vila-demo-cpu)")
    image = Image.open("demo/scene.png").convert("RGB") if Path("demo/scene.png").is_file() else Image.new("RGB", (384, 384))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    image_url, image = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode(), Image.open(io.BytesIO(jpeg)).convert("RGB")
    rows = []
    proc, url = start_server(engine, args.threads)
    try:
        for concurrency, n in REQUESTS.items():
            direct = direct_runs(engine, args.threads, image, concurrency, n)
            served = server_runs(url, image_url, concurrency, n)
            rows.append({"concurrency": concurrency, "direct": direct, "server": served})
            print(f"c={concurrency:2}: direct TTFT p50 {direct['ttft_p50_s']:.3f} s, total {direct['total_mean_s']:.3f} s, "
                  f"{direct['throughput_req_s']:.2f} req/s | server TTFT p50 {served['ttft_p50_s']:.3f} s, total "
                  f"{served['total_mean_s']:.3f} s, {served['throughput_req_s']:.2f} req/s", flush=True)
        shared = with_alerts(url, image_url, Path("demo/clip.mp4").resolve(), REQUESTS[1]) \
            if Path("demo/clip.mp4").is_file() else None
        if shared:
            print(f"c= 1 with 2 alert rules every 1 s: TTFT p50 {shared['chat']['ttft_p50_s']:.3f} s, total "
                  f"{shared['chat']['total_mean_s']:.3f} s; {shared['rule_evaluations']} rule evaluations meanwhile",
                  flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    one = rows[0]
    overhead = one["server"]["total_mean_s"] / one["direct"]["total_mean_s"] - 1
    result = {"benchmark": "serve", "engine": str(engine), "threads": args.threads, "cpu": cpu_description(),
              "question": QUESTION, "max_tokens": TOKENS, "rows": rows, "with_alert_rules": shared,
              "server_overhead_at_concurrency_1": round(overhead, 4), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text_atomic(HERE / "results" / "serve.json", json.dumps(result, indent=2) + "\n")
    print(f"server overhead at concurrency 1: {100 * overhead:+.1f} % of the direct call's total time")


if __name__ == "__main__":
    main()

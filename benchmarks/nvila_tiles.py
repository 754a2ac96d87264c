"""NVILA-Lite's tiles on the cpu engine: vision ms per image and TTFT for a 1344×896 image at --max-tiles 1, 4 and
12, with the vision tower in ONNX Runtime fp32 and W8A8 int8, at 1 and 2 threads.

Two NVILA-Lite layouts (image_aspect_ratio dynamic, 448-px tiles, mlp_downsample_3x3_fix), both with random vision
weights and the demo's real SmolLM2-135M LLM (AWQ int4):
- "demo": the demo tower's width (hidden 256, 4 layers) at 448 px;
- "siglip-448": SigLIP-so400m's real shape at 448 (hidden 1152, ffn 4304, 16 heads, 26 used layers, 1024 patches),
  what NVILA-Lite runs.
Each row is one `vila-edge bench` (a warm-up and 3 timed runs; vision is their mean, TTFT their median); the tile
counts are what VILA's dynamic_preprocess gives a 3:2 image (max_tiles 1: one tile; 4: a 2×2 grid and the thumbnail;
12: 3×2 and the thumbnail). The real-shape tower takes ~10 s per tile in fp32 on one core of this machine, so its
full grid runs for tens of minutes: pick with --towers / --threads / --max-tiles.

    .venv/bin/python benchmarks/nvila_tiles.py     # -> benchmarks/results/nvila_tiles.json
"""

import argparse
import json
import time
from pathlib import Path

from vila_edge.cli import main as vila_edge
from vila_edge.demo import DEMO_TOWER, build_demo_checkpoint
from vila_edge.device import cpu_description
from vila_edge.synthetic import write_projector, write_siglip_tower, write_top_config

HERE = Path(__file__).parent
TOWERS = {
    "demo": {**DEMO_TOWER, "image_size": 448},
    "siglip-448": dict(image_size=448, hidden=1152, layers=27, heads=16, intermediate=4304),
}
MAX_TILES, THREADS, IMAGE = (1, 4, 12), (1, 2), "1344x896"


def lite_checkpoint(work: Path, demo: Path, name: str) -> Path:
    root = work / f"nvila-lite-{name}"
    if (root / "config.json").is_file():
        return root
    root.mkdir(parents=True)
    (root / "llm").symlink_to((demo / "llm").resolve())
    tower = TOWERS[name]
    write_siglip_tower(root / "vision_tower", seed=3, **tower)
    write_projector(root / "mm_projector", "mlp_downsample_3x3_fix", tower["hidden"], 576, seed=4)
    write_top_config(root, conv_mode="auto", image_aspect_ratio="dynamic", num_video_frames=8)
    return root


def run(*argv) -> None:
    code = vila_edge([str(a) for a in argv])
    if code not in (0, 3):
        raise SystemExit(f"vila-edge {' '.join(map(str, argv))}: exit {code}")


def engines(work: Path, demo: Path, name: str) -> dict[str, Path]:
    """{"fp32": engine, "int8": engine} of the layout (quantized once, with a short AWQ search: the LLM's speed, not
    its quality, is measured here)."""
    quant = work / f"nvila-lite-{name}-awq"
    if not (quant / "config.json").is_file():
        run("quantize", lite_checkpoint(work, demo, name), "-o", quant, "--group-size", 64, "--n-samples", 2,
            "--seqlen", 128, "--vision-calib-images", 8, "--quiet", "--overwrite")
    out = {}
    for precision, vision in (("fp32", "fp32"), ("int8", "w8a8")):
        out[precision] = work / f"nvila-lite-{name}-cpu-{precision}"
        if not (out[precision] / "manifest.json").is_file():
            run("build-engine", quant, "-o", out[precision], "--target", "cpu", "--vision", vision, "--overwrite")
    return out


def bench(engine: Path, threads: int, max_tiles: int, out: Path) -> dict:
    run("bench", engine, "--images", 1, "--image-size", IMAGE, "--max-tiles", max_tiles, "--threads", threads,
        "--prompt-len", 160, "--gen-len", 8, "--repeat", 3, "--warmup", 1, "--format", "json", "-o", out)
    r = json.loads(out.read_text())
    return {k: r[k] for k in ("tiles_per_image", "image_tokens", "vision_ms", "vision_ms_per_tile", "ttft_s",
                              "ttft_median_s", "prefill_tok_s", "decode_tok_s")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="demo/bench-nvila")
    p.add_argument("--towers", nargs="+", default=list(TOWERS), choices=list(TOWERS))
    p.add_argument("--threads", nargs="+", type=int, default=list(THREADS))
    p.add_argument("--max-tiles", nargs="+", type=int, default=list(MAX_TILES))
    args = p.parse_args()
    work, demo = Path(args.work), Path("demo/vila-demo")
    work.mkdir(parents=True, exist_ok=True)
    if not demo.is_dir():
        build_demo_checkpoint(demo)
    rows = []
    for name in args.towers:
        for precision, engine in engines(work, demo, name).items():
            for threads in args.threads:
                for max_tiles in args.max_tiles:
                    r = bench(engine, threads, max_tiles, work / f"{name}-{precision}-t{threads}-m{max_tiles}.json")
                    rows.append({"tower": name, "vision": precision, "threads": threads, "max_tiles": max_tiles, **r})
                    print(f"{name:11} {precision} t{threads} max_tiles {max_tiles:2}: {r['tiles_per_image']:g} tiles, "
                          f"{r['image_tokens']} tokens, vision {r['vision_ms']:.0f} ms ({r['vision_ms_per_tile']:.0f} "
                          f"ms/tile), TTFT {1e3 * r['ttft_median_s']:.0f} ms", flush=True)
                    save(rows)  # after every row: a long run stopped early keeps what it measured


def save(rows: list[dict]) -> None:
    """The rows measured now, over the saved ones with the same tower, vision, threads and max_tiles (a partial run
    keeps the others)."""
    path = HERE / "results" / "nvila_tiles.json"
    key = lambda r: (r["tower"], r["vision"], r["threads"], r["max_tiles"])  # noqa: E731
    kept = {key(r): r for r in (json.loads(path.read_text())["rows"] if path.is_file() else [])}
    kept.update({key(r): {**r, "measured": time.strftime("%Y-%m-%d")} for r in rows})
    result = {"benchmark": "nvila_tiles", "image": IMAGE, "cpu": cpu_description(), "towers": TOWERS,
              "rows": list(kept.values()), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

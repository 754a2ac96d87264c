"""`vila-edge plan --recipe NAME --target T`: will the engine fit? Weights, KV cache at max_seq_len,
vision engine, activations and runtime against the target's memory (estimates, in GB = 1e9 bytes)."""

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .targets import Target

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
GB = 1e9


def load_recipe(name: str) -> dict:
    """A recipe by name (recipes/NAME.json) or path."""
    path = Path(name) if name.endswith(".json") else RECIPES / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES.glob("*.json"))
        raise UsageError(f"no recipe {name!r}; known: {', '.join(known) or 'none (recipes/ not found)'}, or pass a .json path")
    return json.loads(path.read_text())


def llm_linear_params(llm: dict) -> int:
    hd = llm["hidden"] // llm["heads"]
    attn = llm["hidden"] * (llm["heads"] + 2 * llm["kv_heads"]) * hd + llm["heads"] * hd * llm["hidden"]
    return llm["layers"] * (attn + 3 * llm["hidden"] * llm["intermediate"])


def vision_params(vision: dict) -> int:
    h, i = vision["hidden"], vision["intermediate"]
    patches = (vision["image_size"] // vision["patch"]) ** 2
    return vision["layers"] * (4 * h * h + 2 * h * i) + 3 * vision["patch"] ** 2 * h + patches * h


def vision_tiles(vision: dict) -> int:
    """Tower passes per image: 1, or Σ (scale / base)² over S2 scales."""
    scales = vision.get("s2_scales") or [vision["image_size"]]
    return sum((s // scales[0]) ** 2 for s in scales)


@dataclass
class Plan:
    recipe: str
    target: Target
    max_batch: int
    max_input_len: int
    max_seq_len: int
    max_multimodal_len: int
    parts_gb: dict[str, float]

    @property
    def total_gb(self) -> float:
        return sum(self.parts_gb.values())

    @property
    def fits(self) -> bool:
        return self.total_gb <= self.target.usable_gb


def memory_plan(recipe: dict, target: Target, group_size: int = 128, images: int = 1,
                max_seq_len: int | None = None, max_batch: int | None = None) -> Plan:  # fmt: skip
    """W4A16 LLM (fp16 group scales, fp16 embeddings and lm_head), W8A8 vision, fp16 KV cache."""
    llm, vision = recipe["llm"], recipe["vision"]
    batch = max_batch or target.max_batch
    seq = max_seq_len or target.max_seq_len
    hd = llm["hidden"] // llm["heads"]
    bits = 4 + 16 / group_size  # int4 + an fp16 scale per group
    tables = (1 if llm.get("tied") else 2) * llm["vocab"] * llm["hidden"] * 2
    tokens = target.max_input_len  # activations are sized for a full prefill of max_num_tokens
    tiles = vision_tiles(vision) * images * batch
    patches = (vision["image_size"] // vision["patch"]) ** 2
    parts = {
        "llm weights (int4)": llm_linear_params(llm) * bits / 8 / GB,
        "embeddings + lm_head (fp16)": tables / GB,
        "kv cache (fp16, max_seq_len)": 2 * llm["layers"] * llm["kv_heads"] * hd * 2 * seq * batch / GB,
        "vision engine (int8)": vision_params(vision) / GB,
        "activations": (tokens * (2 * llm["intermediate"] + 4 * llm["hidden"]) * 2 + batch * llm["vocab"] * 4
                        + tiles * patches * vision["intermediate"] * 2 * 2) / GB,  # fmt: skip
        "runtime (CUDA, TensorRT)": target.runtime_gb,
    }
    return Plan(recipe["name"], target, batch, target.max_input_len, seq, batch * images * recipe["tokens_per_image"],
                {k: round(v, 3) for k, v in parts.items()})  # fmt: skip


def format_plan(plan: Plan) -> str:
    t = plan.target
    lines = [f"{plan.recipe} on {t.name} ({t.description}): max_batch {plan.max_batch}, max_input_len {plan.max_input_len}, "
             f"max_seq_len {plan.max_seq_len}, max_multimodal_len {plan.max_multimodal_len}"]  # fmt: skip
    lines += [f"  {name:<30} {gb:7.2f} GB" for name, gb in plan.parts_gb.items()]
    lines.append(f"  {'total':<30} {plan.total_gb:7.2f} GB of {t.usable_gb:.1f} GB usable ({t.memory_gb:g} GB, "
                 f"{t.reserved_gb:g} GB kept by the system)")  # fmt: skip
    if plan.fits:
        lines.append(f"  fits, {t.usable_gb - plan.total_gb:.2f} GB to spare")
    else:
        lines.append(f"  does NOT fit: {plan.total_gb - t.usable_gb:.2f} GB over. Pick a larger target or a smaller "
                     "model; a shorter --max-seq-len shrinks only the KV cache")  # fmt: skip
    return "\n".join(lines)

"""`vila-edge plan --recipe NAME --target T`: will the engine fit? Weights, KV cache at max_seq_len,
vision engine, activations and runtime against the target's memory (estimates, in GB = 1e9 bytes)."""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .targets import Target
from .tiling import VisionLayout, per_image

# The repository's recipes/ (a checkout or an editable install), else where setup.py's data_files put them.
RECIPES = next((p for p in (Path(__file__).resolve().parents[1] / "recipes", Path(sys.prefix) / "share/vila-edge/recipes")
                if p.is_dir()), Path(__file__).resolve().parents[1] / "recipes")
GB = 1e9
VISION_BYTES = {"int8": 1, "fp16": 2, "none": 0}  # per vision parameter, by the vision plan's precision
FRAME_BATCH = 8  # LLaMA-VID: video frames stream through the tower this many at a time, whatever their number
PLAN_PRECISION = {"w8a8": "int8", "fp16": "fp16", "none": "none"}  # build-engine --vision -> the vision plan's precision


def load_recipe(name: str) -> dict:
    """A recipe by name (recipes/NAME.json) or path."""
    path = Path(name) if name.endswith(".json") else RECIPES / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES.glob("*.json"))
        raise UsageError(f"no recipe {name!r}; known: {', '.join(known) or 'none (recipes/ not found)'}, or pass a .json path")
    return json.loads(path.read_text())


def recipe_from_checkpoint(ckpt) -> dict:
    """A checkpoint's shapes in the recipes/ format (the vision layers its feature selection uses)."""
    c, v = ckpt.llm_config, ckpt.vision_config
    layers = v["num_hidden_layers"]
    used = layers + ckpt.select_layer + 1 if ckpt.select_layer < 0 else ckpt.select_layer
    vision = {"kind": ckpt.vision_kind, "hidden": v["hidden_size"], "layers": used, "intermediate": ckpt.vision_intermediate,
              "image_size": ckpt.image_size, "patch": v["patch_size"]}
    if ckpt.s2_scales:
        vision["s2_scales"] = ckpt.s2_scales
    layout = ckpt.vision_layout
    if layout.mode != "single":
        vision["tiling"] = {"mode": layout.mode, "split": layout.split, "output_scale": layout.output_scale,
                            "min_tiles": layout.min_tiles, "max_tiles": layout.max_tiles}
    recipe = {
        "name": ckpt.name,
        "llm": {"arch": c["model_type"], "hidden": c["hidden_size"], "layers": c["num_hidden_layers"],
                "heads": c["num_attention_heads"], "kv_heads": c.get("num_key_value_heads") or c["num_attention_heads"],
                "intermediate": c["intermediate_size"], "vocab": c["vocab_size"],
                "tied": bool(c.get("tie_word_embeddings"))},
        "vision": vision,
        "projector": ckpt.projector_type,
        "tokens_per_image": ckpt.tokens_per_image,
        "unconfirmed": [],
    }
    if ckpt.llamavid is not None:  # LLaMA-VID's Q-Former and projections, as recipes/llama-vid-7b.json gives them
        b = ckpt.llamavid.bert
        recipe.update(family="llama-vid", qformer={
            "hidden": b["hidden_size"], "layers": b["num_hidden_layers"], "intermediate": b["intermediate_size"],
            "cross_width": v["hidden_size"], "queries": ckpt.llamavid.num_query, "vocab": b["vocab_size"],
            "llm_hidden": c["hidden_size"]})
    return recipe


def llm_linear_params(llm: dict) -> int:
    hd = llm["hidden"] // llm["heads"]
    attn = llm["hidden"] * (llm["heads"] + 2 * llm["kv_heads"]) * hd + llm["heads"] * hd * llm["hidden"]
    return llm["layers"] * (attn + 3 * llm["hidden"] * llm["intermediate"])


def vision_params(vision: dict) -> int:
    h, i = vision["hidden"], vision["intermediate"]
    patches = (vision["image_size"] // vision["patch"]) ** 2
    return vision["layers"] * (4 * h * h + 2 * h * i) + 3 * vision["patch"] ** 2 * h + patches * h


def qformer_params(q: dict | None) -> int:
    """LLaMA-VID's attention modules: the BERT Q-Former (query and text feed-forwards, cross-attention every other
    layer) and the context projections; 0 for other recipes."""
    if not q:
        return 0
    h, i, c = q["hidden"], q["intermediate"], q["cross_width"]
    layers = q["layers"] * (4 * h * h + 2 * 2 * h * i) + (q["layers"] + 1) // 2 * (2 * h * h + 2 * c * h)
    return layers + q["vocab"] * h + h * c + c * c + c * q["llm_hidden"]


def recipe_layout(vision: dict, max_tiles: int | None = None) -> VisionLayout:
    """A recipe's tiling: its "tiling" entry (S2 / NVILA), else S2 when it lists scales, else one image."""
    t = vision.get("tiling") or {"mode": "s2" if vision.get("s2_scales") else "single"}
    layout = VisionLayout(t["mode"], tile=vision["image_size"], scales=tuple(vision.get("s2_scales") or ()),
                          split=t.get("split") or vision["image_size"], output_scale=t.get("output_scale", 0),
                          min_tiles=t.get("min_tiles", 1), max_tiles=t.get("max_tiles", 12))
    return layout.with_max_tiles(max_tiles)



@dataclass
class Plan:
    recipe: str
    target: Target
    max_batch: int
    max_input_len: int
    max_seq_len: int
    max_multimodal_len: int
    images: int  # per prompt
    parts_gb: dict[str, float]
    tower_batch: int = 1  # tower passes of a full batch of prompts: the vision plan's largest batch
    max_tiles: int | None = None  # NVILA: the tiles per image the plan was sized for
    projector_batch: int = 0  # S2 / NVILA: the blocks one image's projector call takes at most (its plan's largest batch)
    max_frames: int | None = None  # LLaMA-VID: the video frames a prompt holds (max_multimodal_len = frames x tokens)

    def to_json(self) -> dict:
        return {"recipe": self.recipe, "target": self.target.name, "max_batch": self.max_batch,
                "max_input_len": self.max_input_len, "max_seq_len": self.max_seq_len,
                "max_multimodal_len": self.max_multimodal_len, "parts_gb": self.parts_gb,
                "total_gb": round(self.total_gb, 3), "usable_gb": self.target.usable_gb, "fits": self.fits,
                "tower_batch": self.tower_batch, "max_tiles": self.max_tiles, "projector_batch": self.projector_batch,
                **self._frames}

    @property
    def limits(self) -> dict:
        """The engine limits, as build-engine passes them to TensorRT-LLM and the manifest records them."""
        return {"max_batch": self.max_batch, "max_input_len": self.max_input_len, "max_seq_len": self.max_seq_len,
                "max_multimodal_len": self.max_multimodal_len, "images": self.images, "tower_batch": self.tower_batch,
                "max_tiles": self.max_tiles, "projector_batch": self.projector_batch, **self._frames}

    @property
    def _frames(self) -> dict:
        return {"max_frames": self.max_frames} if self.max_frames else {}  # LLaMA-VID only

    @property
    def total_gb(self) -> float:
        return sum(self.parts_gb.values())

    @property
    def fits(self) -> bool:
        return self.total_gb <= self.target.usable_gb


def memory_plan(recipe: dict, target: Target, group_size: int = 128, images: int = 1, max_seq_len: int | None = None,
                max_batch: int | None = None, max_input_len: int | None = None, vision_precision: str = "int8",
                max_tiles: int | None = None) -> Plan:
    """W4A16 LLM (fp16 group scales and zeros, fp16 embeddings and lm_head), the vision plan in `vision_precision`
    (int8, fp16, or none: text only), fp16 KV cache."""
    if vision_precision not in VISION_BYTES:
        raise UsageError(f"vision precision {vision_precision!r}: one of {', '.join(VISION_BYTES)}")
    llm, vision = recipe["llm"], recipe["vision"]
    batch = max_batch or target.max_batch
    seq = max_seq_len or target.max_seq_len
    input_len = max_input_len or min(target.max_input_len, seq - 1)
    if not 0 < input_len < seq or batch < 1 or images < 0:
        raise UsageError(f"max_input_len {input_len} must be below max_seq_len {seq}, and max_batch at least 1")
    layout = recipe_layout(vision, max_tiles)
    cost = per_image(layout, recipe["tokens_per_image"])  # the costliest single image: an engine is sized for it
    passes, image_tokens = cost["tower_passes"][1], cost["tokens"][1]
    if images * image_tokens >= input_len:
        raise UsageError(f"{images} image(s) of {image_tokens} tokens leave no room for text in max_input_len {input_len}; "
                         "raise --max-input-len, lower --images" + (" or --max-tiles" if passes > 1 else ""))
    hd = llm["hidden"] // llm["heads"]
    bits = 4 + 32 / group_size  # int4 + an fp16 scale and an fp16 zero per group
    tables = (1 if llm.get("tied") else 2) * llm["vocab"] * llm["hidden"] * 2
    tokens = input_len * batch  # activations are sized for a full prefill of max_num_tokens
    tiles = passes * images * batch if vision_precision != "none" else 0
    if recipe.get("qformer"):  # `images` counts a video's frames, which the tower takes FRAME_BATCH at a time
        tiles = min(tiles, FRAME_BATCH)
    patches = (vision["image_size"] // vision["patch"]) ** 2
    parts = {
        "llm weights (int4)": llm_linear_params(llm) * bits / 8 / GB,
        "embeddings + lm_head (fp16)": tables / GB,
        "kv cache (fp16, max_seq_len)": 2 * llm["layers"] * llm["kv_heads"] * hd * 2 * seq * batch / GB,
        f"vision engine ({vision_precision})": vision_params(vision) * VISION_BYTES[vision_precision] / GB,
        "activations": (tokens * (2 * llm["intermediate"] + 4 * llm["hidden"]) * 2 + batch * llm["vocab"] * 4
                        + tiles * patches * vision["intermediate"] * 2 * 2) / GB,
        "runtime (CUDA, TensorRT)": target.runtime_gb,
    }
    if recipe.get("qformer"):
        parts["q-former + projections (fp16)"] = qformer_params(recipe["qformer"]) * 2 / GB
    return Plan(recipe["name"], target, batch, input_len, seq, batch * images * image_tokens, images,
                {k: round(v, 3) for k, v in parts.items()}, tower_batch=max(1, images) * batch * passes,
                max_tiles=layout.max_tiles if layout.mode.startswith("dynamic") else None,
                projector_batch=image_tokens // recipe["tokens_per_image"] if layout.channel_copies > 1 else 0)


def format_plan(plan: Plan) -> str:
    t = plan.target
    lines = [f"{plan.recipe} on {t.name} ({t.description}): max_batch {plan.max_batch}, max_input_len {plan.max_input_len}, "
             f"max_seq_len {plan.max_seq_len}, max_multimodal_len {plan.max_multimodal_len}"]
    lines += [f"  {name:<30} {gb:7.2f} GB" for name, gb in plan.parts_gb.items()]
    lines.append(f"  {'total':<30} {plan.total_gb:7.2f} GB of {t.usable_gb:.1f} GB usable ({t.memory_gb:g} GB, "
                 f"{t.reserved_gb:g} GB kept by the system)")
    if t.support_note:
        lines.append(f"  note: {t.support_note}")
    if plan.fits:
        lines.append(f"  fits, {t.usable_gb - plan.total_gb:.2f} GB to spare")
    else:
        lines.append(f"  does NOT fit: {plan.total_gb - t.usable_gb:.2f} GB over. Pick a larger target or a smaller "
                     "model; a shorter --max-seq-len shrinks only the KV cache")
    return "\n".join(lines)

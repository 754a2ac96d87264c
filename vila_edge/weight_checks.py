"""The weights against the configs: every safetensors header read (truncated files are caught), and the sizes the
configs state (LLM, vision tower, projector widths) compared with the tensors' shapes, naming both sides."""

from pathlib import Path

from .arch import PROJECTORS, VISION_TOWERS
from .config_checks import RESTORE
from .errors import CheckpointError
from .formats import CHECKPOINT_PARTS as SUBFOLDERS


def check_weights(ckpt) -> None:
    """Every safetensors header read (truncated files are caught here), and the configs' sizes checked against them."""
    shapes = {name: ckpt.shapes(name) for name in SUBFOLDERS if not ckpt.is_pickle(name)}
    if "mm_projector" in shapes:  # first: its message names both sides of a mismatch
        _check_projector_widths(ckpt, shapes["mm_projector"])
    if "model.embed_tokens.weight" in shapes.get("llm", {}):  # a whole LLM: a partial set of tensors is not compared
        _check_sizes(ckpt.llm_dir / "config.json", _llm_sizes(ckpt.llm_config, shapes["llm"]))
    if "vision_tower" in shapes:
        tower = VISION_TOWERS.get(ckpt.vision_kind, VISION_TOWERS["siglip"])
        sizes = _vision_sizes(ckpt.vision_config, shapes["vision_tower"], tower, ckpt.vision_intermediate)
        _check_sizes(ckpt.vision_dir / "config.json", sizes)


def _layer_count(shapes: dict, prefix: str) -> int | None:
    """How many layers the weights hold: distinct N in `{prefix}N.` (None where there are none)."""
    return len({name[len(prefix) :].split(".", 1)[0] for name in shapes if name.startswith(prefix)}) or None


def _rows(shapes: dict, linear: str) -> int | None:
    """Output features of a linear: rows of its weight [out, in], or of an AWQ GEMM qweight [in, out / 8]."""
    if f"{linear}.weight" in shapes:
        return shapes[f"{linear}.weight"][0]
    if f"{linear}.qweight" in shapes:
        return shapes[f"{linear}.qweight"][1] * 8
    return None


def _llm_sizes(c: dict, shapes: dict) -> list[tuple[str, int, int | None, str]]:
    """(what the config says, its value, what the weights hold or None, where) for the sizes of the LLM."""
    embed = shapes["model.embed_tokens.weight"]
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or c["num_attention_heads"]
    attn = "model.layers.0.self_attn"
    return [
        ("vocab_size", c["vocab_size"], embed[0], "model.embed_tokens.weight"),
        ("hidden_size", c["hidden_size"], embed[1], "model.embed_tokens.weight"),
        ("num_hidden_layers", c["num_hidden_layers"], _layer_count(shapes, "model.layers."), "model.layers.*"),
        ("intermediate_size", c["intermediate_size"], _rows(shapes, "model.layers.0.mlp.gate_proj"), "gate_proj"),
        (f"num_attention_heads × head_dim ({c['num_attention_heads']} × {head_dim})", c["num_attention_heads"] * head_dim,
         _rows(shapes, f"{attn}.q_proj"), "q_proj"),
        (f"num_key_value_heads × head_dim ({kv_heads} × {head_dim})", kv_heads * head_dim, _rows(shapes, f"{attn}.k_proj"),
         "k_proj"),
    ]  # fmt: skip


PATCH_WEIGHTS = ("embeddings.patch_embedding.weight", "embeddings.patch_embeddings.projection.weight")  # DINOv2's


def _vision_sizes(c: dict, shapes: dict, tower, inner: int) -> list[tuple[str, int, int | None, str]]:
    """The same for the vision tower (transformers 4 saved its tensors under vision_model.)."""
    shapes = {k.removeprefix("vision_model."): v for k, v in shapes.items()}
    patch_name = next((n for n in PATCH_WEIGHTS if n in shapes), PATCH_WEIGHTS[0])
    patch = shapes.get(patch_name) or [None, None, None]  # [hidden, 3, p, p]
    layers = next((p for p in ("encoder.layers.", "encoder.layer.") if _layer_count(shapes, p)), "encoder.layers.")
    table, axis = tower.position_embedding
    positions, cls_token = (shapes.get(table) or [None] * (axis + 1))[axis], tower.cls_token
    grid = c["image_size"] // c["patch_size"]
    return [
        ("hidden_size", c["hidden_size"], patch[0], patch_name),
        ("patch_size", c["patch_size"], patch[2], patch_name),
        (f"positions for image_size {c['image_size']} / patch_size {c['patch_size']}", grid**2 + cls_token, positions,
         table),
        ("num_hidden_layers", c["num_hidden_layers"], _layer_count(shapes, layers), f"{layers}*"),
        ("intermediate_size", inner, _rows(shapes, f"{layers}0.mlp.fc1"), "fc1"),
    ]  # fmt: skip


def _check_sizes(path: Path, sizes: list[tuple[str, int, int | None, str]]) -> None:
    for what, want, got, tensor in sizes:
        if got is not None and got != want:
            raise CheckpointError(
                f"{path}: {what} is {want}, the weights hold {got} ({tensor}); {RESTORE}, "
                "or the weights beside it come from another model"
            )


def _check_projector_widths(ckpt, shapes: dict[str, list[int]]) -> None:
    spec = PROJECTORS[ckpt.projector_type]
    where = ckpt.weights["mm_projector"][0]
    for key in (spec.first_key, spec.last_key):
        if key not in shapes:
            raise CheckpointError(
                f"{where}: tensor {key} missing for projector type {ckpt.projector_type}; "
                "mm_projector/config.json names the wrong type or the weights are from another projector"
            )
    want_in = ckpt.mm_hidden * spec.downsample**2
    got_in = shapes[spec.first_key][1]
    if got_in != want_in:
        factor = f" × {spec.downsample ** 2}" if spec.downsample > 1 else ""
        source = ckpt.vision_dir / "config.json"
        if ckpt.s2_scales:
            source = f"{source} hidden_size × {len(ckpt.s2_scales)} S2 scales in {ckpt.root / 'config.json'}"
        raise CheckpointError(
            f"{where}: projector input width {got_in} does not match the vision tower "
            f"(hidden {ckpt.mm_hidden}{factor} = {want_in}, from {source}); "
            "vision_tower/ and mm_projector/ come from different models"
        )
    got_out = shapes[spec.last_key][0]
    if got_out != ckpt.llm_hidden:
        raise CheckpointError(
            f"{where}: projector output width {got_out} does not match the LLM hidden size {ckpt.llm_hidden} "
            f"({ckpt.llm_dir / 'config.json'}); llm/ and mm_projector/ come from different models"
        )

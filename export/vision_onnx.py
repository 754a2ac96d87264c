"""Vision tower (up to the selected layer) + projector -> ONNX: `pixel_values` [B, 3, S, S] float32,
already normalised -> `image_embeds` [B, T, H] float32 in the projector's token order, dynamic batch.

A multi-scale (S2 / NVILA) tower is two graphs, as VILA merges the scales' features between tower and projector:
the tower, `pixel_values` -> `image_features` [B, P, C] (one tile each), and the projector, `image_features`
[B, P', C·scales] (the merged map, tiling.image_blocks) -> `image_embeds`."""

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from vila_edge.atomic import current_umask
from vila_edge.runtime.onnx_vision import FEATURES, INPUT, OUTPUT

OPSET = 17
# onnx 1.23 writes IR 11+, which the ONNX Runtime CPU wheels of 2025-26 do not all read; IR 9 is opset 17's
IR_VERSION = 9
EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a file at 2 GB: bigger towers keep weights beside the graph
SET_ASIDE_BYTES = 1 << 16  # initializers this big are set aside while a graph is serialized (set_aside_weights)


class VisionProjector(nn.Module):
    def __init__(self, vision: nn.Module, projector: nn.Module):
        super().__init__()
        self.vision, self.projector = vision, projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision(pixel_values))


class Tower(nn.Module):
    """The tower alone, under the name `vision` (node names /vision/layers.i/..., as with the projector)."""

    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values)


class Fp16SafeRMSNorm(nn.Module):
    """An RMSNorm (InternViT's) written for a graph that may run in fp16: each token is divided by its largest |x|
    first, so that its squares stay within fp16 (x² overflows past |x| ≈ 256, and TensorRT runs an fp16 graph's
    squares in fp16, where the torch module squares in fp32). In exact arithmetic it is the module's function:
    x / sqrt(mean(x²) + eps) = y / sqrt(mean(y²) + eps / c²) with y = x / c, for any c > 0."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.variance_epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.abs().amax(-1, keepdim=True).clamp(min=1e-3)  # any floor keeps it exact; this one keeps eps/c² in range
        y = x / c
        return self.weight * (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps / c / c))


@contextmanager
def fp16_safe_norms(module: nn.Module):
    """module with every RMSNorm (a `weight` and a `variance_epsilon`, no bias) swapped for Fp16SafeRMSNorm while
    the block runs; the LayerNorms of SigLIP and CLIP export as LayerNormalization, whose statistics stay fp32."""
    swapped = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if hasattr(child, "variance_epsilon") and isinstance(getattr(child, "weight", None), nn.Parameter):
                swapped.append((parent, name, child))
                setattr(parent, name, Fp16SafeRMSNorm(child))
    try:
        yield module
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _eager_attention(module: nn.Module) -> None:
    """Plain MatMul/Softmax attention in the graph (what TensorRT's MHA fusion and our Q/DQ pass expect)."""
    for m in module.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = "eager"


def save_onnx(model, path: Path) -> None:
    """model to path; over 1 GB its weights go to path.data beside it (onnx moves them out of `model` as it writes)."""
    import onnx

    model.ir_version = IR_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if sum(i.ByteSize() for i in model.graph.initializer) > EXTERNAL_DATA_BYTES:  # model.ByteSize() fails past 2 GB
        onnx.save(model, path, save_as_external_data=True, location=data.name)
        data.chmod(0o666 & ~current_umask())  # onnx creates it private; it is as shareable as the .onnx beside it
    else:
        onnx.save(model, path)


def set_aside_weights(model) -> dict[str, bytes]:
    """Clears the bytes of model's big initializers (names, types and dims kept) and returns them by name, so that the
    graph can be serialized (shape inference, the version converter, ONNX Runtime) whatever the size of the weights:
    protobuf refuses a message over 2 GB (InternViT-6B's fp32 graph is 22 GB). put_back_weights restores them."""
    kept = {}
    for init in model.graph.initializer:
        if init.HasField("raw_data") and init.ByteSize() >= SET_ASIDE_BYTES:
            kept[init.name] = init.raw_data
            init.ClearField("raw_data")
    return kept


def put_back_weights(model, kept: dict[str, bytes]) -> None:
    for init in model.graph.initializer:
        if init.name in kept:
            init.raw_data = kept[init.name]


@torch.no_grad()
def _export(module: nn.Module, example: torch.Tensor, names: tuple[str, str], path: Path) -> None:
    import tempfile
    import warnings

    import onnx

    module = module.float().eval().cpu()
    _eager_attention(module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # to a file, not to memory: over protobuf's 2 GB the exporter writes the weights beside the graph, which needs a path
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        with warnings.catch_warnings(), fp16_safe_norms(module):  # (the exporter's notes are not the user's)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(Path(tmp) / path.name), dynamo=False, opset_version=OPSET,
                input_names=[names[0]], output_names=[names[1]],
                dynamic_axes={names[0]: {0: "batch"}, names[1]: {0: "batch"}}, do_constant_folding=True,
            )
        model = onnx.load(Path(tmp) / path.name)  # with the weights, wherever the exporter put them
    save_onnx(model, path)


def export_vision_onnx(vision: nn.Module, projector: nn.Module, image_size: int, path: str | Path) -> None:
    """Tower + projector, fp32, to `path` (weights in `path`.data beside it when over 1 GB)."""
    _export(VisionProjector(vision, projector), torch.zeros(1, 3, image_size, image_size), (INPUT, OUTPUT), Path(path))


def export_tower_onnx(vision: nn.Module, image_size: int, path: str | Path) -> None:
    """The tower alone (a multi-scale checkpoint's), fp32: pixels -> the selected features of each tile."""
    _export(Tower(vision), torch.zeros(1, 3, image_size, image_size), (INPUT, FEATURES), Path(path))


def export_projector_onnx(projector: nn.Module, positions: int, channels: int, path: str | Path) -> None:
    """The projector alone, fp32: merged features [B, positions, channels] -> image tokens."""
    _export(projector, torch.zeros(1, positions, channels), (FEATURES, OUTPUT), Path(path))

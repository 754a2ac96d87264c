"""The vision tower + projector ONNX -> a TensorRT plan, on the GPU that will run it (TensorRT 10 API).

int8: the W8A8 Q/DQ ONNX in a strongly typed network. The Q/DQ nodes say what runs in int8, so no
precision flags are set (TensorRT's explicit quantization); the rest keeps the ONNX's float type.
fp16: the fp32 ONNX with the FP16 builder flag (no quantization).
One optimization profile over batch 1..max_batch; the timing cache is saved beside the plan, so a
rebuild on the same device skips the tactic timing.
"""

from pathlib import Path

from vila_edge.errors import CheckpointError
from vila_edge.runtime.onnx_vision import INPUT

PRECISIONS = ("int8", "fp16")


def build_vision_plan(onnx: Path, plan: Path, cache: Path, precision: str, image_size: int, max_batch: int,
                      workspace_bytes: int) -> dict:
    """Writes `plan` and `cache`; returns what the manifest records about the build."""
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {PRECISIONS}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if precision == "int8" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointError(f"{onnx}: TensorRT's ONNX parser refuses it: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = lambda b: (b, 3, image_size, image_size)  # noqa: E731
    profile.set_shape(INPUT, shape(1), shape(max(1, max_batch // 2)), shape(max_batch))
    config.add_optimization_profile(profile)
    timing = config.create_timing_cache(cache.read_bytes() if cache.is_file() else b"")
    config.set_timing_cache(timing, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckpointError(f"{onnx}: TensorRT could not build a plan from it (see the TensorRT log above)")
    plan.write_bytes(bytes(serialized))
    cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"precision": precision, "strongly_typed": precision == "int8", "max_batch": max_batch,
            "workspace_bytes": workspace_bytes, "plan_bytes": plan.stat().st_size}

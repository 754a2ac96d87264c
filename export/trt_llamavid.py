"""LLaMA-VID in a GPU bundle and engine: what trt_engine.py adds for it.

- The limits: a video spliced at one `<image>` puts every frame's tokens (context + content) in the prompt table, so
  TensorRT-LLM's max_multimodal_len is max_frames x tokens per frame (x max_batch); `--max-frames` defaults to
  DEFAULT_MAX_FRAMES (an hour at 1 fps) or as many as max_input_len holds beside TEXT_ROOM tokens of text, its limit. The tower
  plan takes VIDEO_TOWER_BATCH frames a run (its activations are counted in the memory plan).
- The attention graph (attention_fp16.onnx: image_features [N, P+1, C] + question_ids [1, L] -> frame_tokens) goes
  into a TensorRT plan of its own, fp16, with one profile over the frames (1..caption.FRAME_BATCH, the Q-Former's
  batch) and the question's length (1..256). A plan rather than ONNX Runtime's CUDA provider: TensorRT is already
  what the bundle needs on the device, onnxruntime-gpu is one more GPU stack (and on Jetson a JetPack-specific
  wheel), and the graph is the fp16 copy quantize checked against the fp32 one.
"""

from pathlib import Path

from vila_edge.arch import QFORMER_MAX_QUESTION
from vila_edge.caption import FRAME_BATCH
from vila_edge.errors import UsageError
from vila_edge.formats import ATTENTION_PLAN_FILE
from vila_edge.plan import GB, Plan

from .trt_vision import onnx_item_shape

DEFAULT_MAX_FRAMES = 3600  # an hour of video at LLaMA-VID's 1 fps
TEXT_ROOM = 256  # prompt tokens kept for the template and the question when --max-frames is left to its default
VIDEO_TOWER_BATCH = 16  # frames per tower plan run (the feature pass over a video goes in runs of this many)


def frames_plan(plan: Plan, recipe: dict, family: str, max_frames: int | None) -> Plan:
    """`plan` (made for one image a prompt) sized for LLaMA-VID's video: max_frames, max_multimodal_len, the tower's
    batch and its activations; any other family is returned as it is (and refuses --max-frames)."""
    if family != "llama-vid":
        if max_frames is not None:
            raise UsageError(f"--max-frames sizes a LLaMA-VID engine's video; {recipe['name']} is {family}: use --images")
        return plan
    if plan.images == 0:  # --vision none: a text-only engine holds no frames
        return plan
    per_frame = recipe["tokens_per_image"]
    fits = max(0, (plan.max_input_len - TEXT_ROOM) // per_frame)
    frames = min(DEFAULT_MAX_FRAMES, fits) if max_frames is None else max_frames
    if frames < 1 or frames > fits:
        raise UsageError(f"--max-frames {frames}: {frames} frames x {per_frame} tokens leave no {TEXT_ROOM} tokens for "
                         f"the question in max_input_len {plan.max_input_len}; pass --max-frames {fits} or less, or raise "
                         "--max-input-len (and --max-seq-len)")
    vision = recipe["vision"]
    tower_batch = min(frames, VIDEO_TOWER_BATCH) * plan.max_batch
    patches = (vision["image_size"] // vision["patch"]) ** 2
    extra = (tower_batch - plan.tower_batch) * patches * vision["intermediate"] * 2 * 2 / GB  # as memory_plan counts
    plan.parts_gb["activations"] = round(plan.parts_gb["activations"] + max(0.0, extra), 3)
    plan.max_frames, plan.tower_batch = frames, tower_batch
    plan.max_multimodal_len = plan.max_batch * frames * per_frame
    return plan


def bundle_attention(spec: dict, folder: Path) -> None:
    """The bundle's vision entry for the attention graph copy_vision put in `folder`: its file and plan profile."""
    spec["attention_onnx"] = spec.pop("attention_file")
    spec["attention_input"] = onnx_item_shape(folder / spec["attention_onnx"])  # [P+1, C]
    spec["attention_batch"] = FRAME_BATCH
    spec["max_question"] = QFORMER_MAX_QUESTION


def build_attention(bundle: Path, folder: Path, vision: dict, cache: Path, workspace_bytes: int) -> dict:
    """The attention plan into `folder` (the vision plan's timing cache `cache` shared); the manifest's entries."""
    from . import trt_vision

    print(f"building LLaMA-VID's attention plan (fp16) from {vision['attention_onnx']}", flush=True)
    built = trt_vision.build_attention_plan(bundle / vision["attention_onnx"], folder / ATTENTION_PLAN_FILE, cache,
                                            tuple(vision["attention_input"]), vision["attention_batch"],
                                            vision["max_question"], workspace_bytes)
    return {"attention_plan": ATTENTION_PLAN_FILE, "attention_build": built}

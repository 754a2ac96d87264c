"""What `build-engine` can be asked for, with its defaults (the CLI builds its options from these). Plain data."""

from dataclasses import dataclass

# cpu: w8a8 (static per-tensor Q/DQ), w8a8-dynamic (per-token dynamic int8), fp32 ONNX; GPU: w8a8 (int8 plan) or fp16
VISION_CHOICES = ("w8a8", "w8a8-dynamic", "fp16", "fp32", "none")


@dataclass(frozen=True)
class BuildOptions:
    vision: str | None = None  # None: w8a8-dynamic on cpu (per-token scales hold on trained towers), w8a8 on a GPU
    lm_head: str = "int8"  # the cpu target's: int8 rows, or fp16
    conv_mode: str | None = None  # recorded in the manifest (default: the checkpoint's own)
    images: int | None = None  # GPU: images per prompt the engine takes (default 1)
    max_batch: int | None = None  # GPU: default the target's (1 on Jetson)
    max_input_len: int | None = None  # GPU: prompt tokens, images included (default: the target's)
    max_seq_len: int | None = None  # GPU: prompt + answer tokens (default: the target's, within the model's)
    max_tiles: int | None = None  # GPU, NVILA: tiles per image the engine is sized for (default: the checkpoint's)
    max_frames: int | None = None  # GPU, LLaMA-VID: video frames per prompt (default: 3600, or what max_input_len holds)

    def limits(self) -> dict:
        return {"images": self.images, "max_batch": self.max_batch, "max_input_len": self.max_input_len,
                "max_seq_len": self.max_seq_len, "max_tiles": self.max_tiles, "max_frames": self.max_frames}

"""Seeded fuzz of the checkpoint loaders: a tiny checkpoint broken one way at a time, run through `inspect`
and `caption`. Each command either works or exits non-zero with one `vila-edge CMD: error: ...` line that
names the broken file; never a traceback (issue 14, item 8).

The mutations are drawn from random.Random(0), so the set is the same on every run; the test ids say what
each one does (`llama:llm/config.json:hidden_size={'a': 1}`, `llama:vision_tower/model.safetensors:truncate@0.22`).
Caption gets an image where the mutation is on the vision side.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

# The keys the loaders read (or that size the model transformers builds), per config file.
TOP_KEYS = ("model_type", "architectures", "llm_cfg", "vision_tower_cfg", "mm_projector_cfg", "mm_vision_select_layer",
            "mm_vision_select_feature", "image_aspect_ratio", "num_video_frames", "s2", "s2_scales", "dynamic_s2",
            "conv_mode", "chat_template")  # fmt: skip
LLM_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "max_position_embeddings", "tokenizer_model_max_length",
            "model_max_length", "quantization_config")  # fmt: skip
VISION_KEYS = ("architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "image_size", "patch_size", "vision_config")  # fmt: skip
PROCESSOR_KEYS = ("size", "resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                  "image_std", "do_center_crop", "crop_size")  # fmt: skip
TOKENIZER_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "tokenizer_class", "model_max_length",
                  "chat_template", "added_tokens_decoder")  # fmt: skip
GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
# each file, its keys, and how many of them are drawn
KEYS = {"config.json": (TOP_KEYS, 5), "llm/config.json": (LLM_KEYS, 5), "vision_tower/config.json": (VISION_KEYS, 4),
        "mm_projector/config.json": (("mm_projector_type",), 1),
        "vision_tower/preprocessor_config.json": (PROCESSOR_KEYS, 4), "llm/tokenizer_config.json": (TOKENIZER_KEYS, 4),
        "llm/generation_config.json": (GENERATION_KEYS, 2)}  # fmt: skip
WRONG_VALUES = (None, "x", [1, 2], {"a": 1}, -1, 0, 10**12, 1.5, True)
JSON_FILES = ("config.json", "llm/config.json", "vision_tower/config.json", "mm_projector/config.json",
              "vision_tower/preprocessor_config.json", "llm/tokenizer_config.json", "llm/special_tokens_map.json",
              "llm/generation_config.json")  # fmt: skip
SHARDS = ("llm/model.safetensors", "vision_tower/model.safetensors", "mm_projector/model.safetensors")
TOP_VISION_KEYS = ("mm_vision_select_layer", "mm_vision_select_feature", "image_aspect_ratio", "s2", "s2_scales",
                   "dynamic_s2", "vision_tower_cfg", "mm_projector_cfg")  # fmt: skip


@dataclass(frozen=True)
class Mutation:
    file: str  # relative to the checkpoint folder
    op: str  # "set" key to value, "delete" key, "write" the file's bytes, "truncate" to a fraction of its size
    key: str = ""
    value: object = None
    arch: str = "llama"  # which tiny checkpoint: llama has tokenizer.model, qwen2 tokenizer.json

    def __str__(self) -> str:
        if self.op == "set":
            what = f"{self.key}={self.value!r}"
        elif self.op == "delete":
            what = f"del {self.key}"
        elif self.op == "truncate":
            what = f"truncate@{self.value}"
        else:
            what = f"write {self.value!r}" if self.value.isascii() else f"write {len(self.value)} garbage bytes"
        return f"{self.arch}:{self.file}:{what}"

    @property
    def vision(self) -> bool:
        """Whether caption should be given an image to exercise this mutation."""
        return self.file.startswith(("vision_tower/", "mm_projector/")) or self.key in TOP_VISION_KEYS

    def apply(self, root: Path) -> None:
        path = root / self.file
        if self.op == "write":
            path.write_bytes(self.value)
        elif self.op == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * self.value)])
        else:
            config = json.loads(path.read_text())
            if self.op == "set":
                config[self.key] = self.value
            else:
                config.pop(self.key, None)
            path.write_text(json.dumps(config))


def draw_mutations(rng: random.Random) -> list[Mutation]:
    """The issue's named cases, then random keys, whole files and truncations."""

    def garbage() -> bytes:
        return bytes(rng.randrange(256) for _ in range(64))

    named = [
        Mutation("config.json", "write", value=b"null"),
        Mutation("llm/config.json", "write", value=b"null"),
        Mutation("llm/tokenizer.json", "write", value=garbage()),  # beside tokenizer.model, it is read first
        Mutation("llm/tokenizer.json", "write", value=garbage(), arch="qwen2"),
        Mutation("llm/tokenizer.json", "write", value=b"[]", arch="qwen2"),
        Mutation("llm/tokenizer.model", "write", value=garbage()),
        Mutation("config.json", "set", "mm_vision_select_feature", -1),
        Mutation("config.json", "set", "mm_vision_select_layer", "x"),
        Mutation("config.json", "set", "mm_vision_select_layer", 7),
        Mutation("config.json", "set", "mm_vision_select_layer", -9),
        Mutation("config.json", "set", "image_aspect_ratio", "stretch"),
        Mutation("config.json", "set", "s2", True),
        Mutation("mm_projector/config.json", "set", "mm_projector_type", "mlp_downsample_5x5"),
        Mutation("vision_tower/preprocessor_config.json", "set", "size", {"height": 64, "width": 64}),
        Mutation("vision_tower/config.json", "set", "architectures", ["ResNetModel"]),  # loads; caption refuses it
        Mutation("llm/config.json", "set", "quantization_config", {"quant_method": "gptq", "bits": 4}),
        Mutation("llm/tokenizer.json", "write", value=b'{"model": {"type": "BPE"}, "added_tokens": []}', arch="qwen2"),
    ]
    keys = []
    for file, (names, n) in KEYS.items():
        for key in rng.sample(names, n):
            if rng.random() < 0.2:
                keys.append(Mutation(file, "delete", key))
            else:
                keys.append(Mutation(file, "set", key, rng.choice(WRONG_VALUES)))
    contents = (b"null", b"[]", b"42", b'"text"', b"", b'{"truncated": ')
    files = [Mutation(f, "write", value=rng.choice(contents + (garbage(),))) for f in JSON_FILES]
    cuts = [Mutation(f, "truncate", value=round(rng.uniform(0.05, 0.95), 2)) for f in SHARDS]
    cuts.append(Mutation(rng.choice(SHARDS), "write", value=garbage()))
    drawn = named + keys + files + cuts
    return [m for i, m in enumerate(drawn) if m not in drawn[:i]]


MUTATIONS = draw_mutations(random.Random(0))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from vila_edge.demo import write_sample_image

    path = tmp_path_factory.mktemp("fuzz") / "scene.png"
    write_sample_image(str(path))
    return path


def assert_clean(cmd: str, result: tuple[int, str, str], broken: Path) -> None:
    """Success, or exactly one `vila-edge CMD: error: ...` line on stderr that names the broken file."""
    code, _, err = result
    if code == 0:
        return
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vila-edge {cmd}: error: "), err
    assert str(broken) in lines[0], f"the error does not name {broken}: {lines[0]}"


@pytest.mark.parametrize("mutation", MUTATIONS, ids=str)
def test_broken_checkpoint_fails_cleanly(tiny, copy_of, cli, image, mutation):
    # a VILA name gives the conv mode, so no warning depends on the mutation
    root = copy_of(tiny(arch=mutation.arch, name=f"vila1.5-3b-fuzz-{mutation.arch}"))
    mutation.apply(root)
    assert_clean("inspect", cli("inspect", root), root / mutation.file)
    media = ("--image", image) if mutation.vision else ()
    result = cli("caption", root, "--prompt", "Hi", "--max-new-tokens", 2, "--temperature", 0, *media)
    assert_clean("caption", result, root / mutation.file)


def test_the_draw_is_fixed_and_covers_every_file():
    assert [str(m) for m in draw_mutations(random.Random(0))] == [str(m) for m in MUTATIONS]
    assert 40 <= len(MUTATIONS) <= 60
    touched = {m.file for m in MUTATIONS}
    assert set(JSON_FILES) | set(SHARDS) | {"llm/tokenizer.json", "llm/tokenizer.model"} <= touched

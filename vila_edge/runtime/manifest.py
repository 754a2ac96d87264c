"""manifest.json of an engine folder: what was built, for which target, from what; and the
refusals when an engine does not match the runtime that is asked to load it (no torch)."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..arch import FAMILIES, Family
from ..errors import CheckpointError, UsageError
from ..formats import BUILD_SCRIPT, ENGINE_FORMAT, ENGINE_FORMAT_VERSION, MANIFEST_FILE
from ..tiling import VisionLayout
from .tokenizer import EngineTokenizer


def write_manifest(folder: Path, target: str, kind: str = "engine", **fields) -> dict:
    """kind: "engine" (runs here) or "bundle" (a GPU target's portable inputs, built into an engine on the device)."""
    manifest = {"format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION, "kind": kind, "target": target,
                "toolkit_version": __version__, **fields}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def is_engine(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(folder: str | Path, target: str | tuple[str, ...], kind: str | None = "engine") -> dict:
    """The manifest of an engine (or, with kind="bundle", a portable bundle; with None, either) for `target` (or
    one of several) written by this format version; else an error that says what differs and how to rebuild."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    targets = (target,) if isinstance(target, str) else target
    rebuild = f"rebuild it: vila-edge build-engine QUANTIZED_CHECKPOINT -o {folder} --target {'|'.join(targets)}"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing, so {folder} is not an engine folder; {rebuild}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); {rebuild}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ENGINE_FORMAT:
        raise CheckpointError(f"{path}: not a vila-edge engine manifest; {rebuild}")
    version = manifest.get("format_version")
    if version != ENGINE_FORMAT_VERSION:
        age = "an older" if isinstance(version, int) and version < ENGINE_FORMAT_VERSION else "a different"
        raise CheckpointError(
            f"{folder}: engine format {version} (built by vila-edge {manifest.get('toolkit_version', '?')}) is {age} "
            f"format than this runtime reads ({ENGINE_FORMAT_VERSION}, vila-edge {__version__}); {rebuild}"
        )
    if kind == "bundle" and manifest.get("kind", "engine") != "bundle":
        raise UsageError(f"{folder}: already an engine (for {manifest.get('target')}); build-engine takes a quantized "
                         "checkpoint or a bundle")
    if kind == "engine" and manifest.get("kind", "engine") == "bundle":
        raise CheckpointError(
            f"{folder}: a portable bundle for {manifest.get('target')}, not an engine yet; build the engine on the "
            f"device itself: sh {folder}/{BUILD_SCRIPT} (it runs vila-edge build-engine {folder} -o ENGINE --target {manifest.get('target')})"
        )
    if manifest.get("target") not in targets:
        runs = " or ".join(repr(t) for t in targets) if len(targets) < 3 else "GPU"
        raise CheckpointError(
            f"{folder}: engine built for target {manifest.get('target')!r}, but this backend runs {runs} engines; {rebuild}"
        )
    return manifest


@dataclass
class EngineInfo:
    """The parts of a checkpoint the captioning front reads, from an engine's manifest."""

    root: Path
    manifest: dict
    family: Family = field(init=False)

    def __post_init__(self):
        self.family = FAMILIES[self.manifest["text"]["family"]]

    def recorded_conv_mode(self) -> tuple[str, str]:
        """Resolved and recorded when the engine was built."""
        return self.manifest["text"]["conv_mode"], f"{MANIFEST_FILE} (build-engine)"

    @property
    def name(self) -> str:
        return self.manifest["source"]["name"]

    @property
    def preprocessor(self) -> dict:
        return self.manifest["preprocessor"]

    @property
    def image_aspect_ratio(self) -> str:
        return self.manifest["image_aspect_ratio"]

    @property
    def vision_layout(self) -> VisionLayout:
        """The checkpoint's tiling, recorded by build-engine (engines from before it: one resized image)."""
        layout = self.manifest.get("vision_layout")
        if not layout:
            return VisionLayout("single", tile=0)
        return VisionLayout(**{**layout, "scales": tuple(layout.get("scales", ()))})

    @property
    def max_tiles_limit(self) -> int | None:
        """The tiles per image a GPU engine's vision plan and max_multimodal_len were sized for (None: no limit)."""
        return (self.manifest.get("limits") or {}).get("max_tiles")

    @property
    def model_max_length(self) -> int:
        """The model's limit, or a GPU engine's max_seq_len where that is shorter (the engine holds no more)."""
        engine_limit = (self.manifest.get("limits") or {}).get("max_seq_len")
        return min(self.manifest["text"]["model_max_length"], engine_limit or float("inf"))

    @property
    def num_video_frames(self) -> int:
        return self.manifest["text"]["num_video_frames"]

    @property
    def tokens_per_image(self) -> int:
        """LLM tokens per image (LLaMA-VID: per frame), as build-engine recorded them; 0 for a text-only engine."""
        return (self.manifest.get("vision") or {}).get("tokens_per_image", 0)

    @property
    def question_tokenizer_dir(self) -> Path | None:
        """LLaMA-VID's Q-Former vocabulary in the engine folder (question.QuestionTokenizer); None for other families."""
        folder = self.manifest["text"].get("question_tokenizer")
        return self.root / folder if folder else None

    def load_tokenizer(self) -> tuple[EngineTokenizer, list[int]]:
        """(the engine's tokenizer, the ids of the family's image-end text spliced after each image block)."""
        tokenizer = EngineTokenizer.load(self.root / self.manifest["text"]["tokenizer"])
        end_text = self.family.image_end_text
        return tokenizer, tokenizer(end_text, add_special_tokens=False).input_ids if end_text else []

    def require_vision(self, vision):
        """The engine's vision runner; a text-only engine says so."""
        if vision is None:
            raise UsageError(f"{self.root}: built without a vision tower (--vision none); ask a text-only question")
        return vision

    def require_attention(self, attention):
        """A LLaMA-VID engine's attention runner (features + question ids -> frame tokens); any other says so."""
        if attention is None:
            raise CheckpointError(f"{self.root}: no LLaMA-VID attention graph in its manifest, so no frame can be "
                                  "conditioned on the question; rebuild it from a LLaMA-VID checkpoint quantized by this "
                                  "vila-edge (--vision w8a8)")
        return attention

    def require_projector(self, projector):
        """A multi-scale (S2 / NVILA) engine's projector runner; an engine whose vision is one graph says so."""
        if projector is None:
            raise CheckpointError(f"{self.root}: its vision is one graph (tower + projector), and {self.vision_layout.mode} "
                                  "images need them apart; re-quantize with this vila-edge and rebuild the engine")
        return projector

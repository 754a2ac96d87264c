"""manifest.json of an engine folder: what was built, for which target, from what; and the
refusals when an engine does not match the runtime that is asked to load it (no torch)."""

import json
from pathlib import Path

from .. import __version__
from ..errors import CheckpointError, UsageError

MANIFEST = "manifest.json"
FORMAT = "vila-edge-engine"
FORMAT_VERSION = 1
BUILD_SCRIPT = "build.sh"  # in a bundle: builds the engine on the device


def write_manifest(folder: Path, target: str, kind: str = "engine", **fields) -> dict:
    """kind: "engine" (runs here) or "bundle" (a GPU target's portable inputs, built into an engine on the device)."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "target": target,
                "toolkit_version": __version__, **fields}  # fmt: skip
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def is_engine(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: str | Path, target: str | tuple[str, ...], kind: str = "engine") -> dict:
    """The manifest of an engine (or, with kind="bundle", a portable bundle) for `target` (or one of several)
    written by this format version; else an error that says what differs and how to rebuild."""
    folder = Path(folder)
    path = folder / MANIFEST
    targets = (target,) if isinstance(target, str) else target
    rebuild = f"rebuild it: vila-edge build-engine QUANTIZED_CHECKPOINT -o {folder} --target {'|'.join(targets)}"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing, so {folder} is not an engine folder; {rebuild}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); {rebuild}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vila-edge engine manifest; {rebuild}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        age = "an older" if isinstance(version, int) and version < FORMAT_VERSION else "a different"
        raise CheckpointError(
            f"{folder}: engine format {version} (built by vila-edge {manifest.get('toolkit_version', '?')}) is {age} "
            f"format than this runtime reads ({FORMAT_VERSION}, vila-edge {__version__}); {rebuild}"
        )
    if kind == "bundle" and manifest.get("kind", "engine") != "bundle":
        raise UsageError(f"{folder}: already an engine (for {manifest.get('target')}); build-engine takes a quantized "
                         "checkpoint or a bundle")  # fmt: skip
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

"""manifest.json of an engine folder: what was built, for which target, from what; and the
refusals when an engine does not match the runtime that is asked to load it (no torch)."""

import json
from pathlib import Path

from .. import __version__
from ..errors import CheckpointError

MANIFEST = "manifest.json"
FORMAT = "vila-edge-engine"
FORMAT_VERSION = 1


def write_manifest(folder: Path, target: str, **fields) -> dict:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "target": target, "toolkit_version": __version__, **fields}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def is_engine(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: str | Path, target: str) -> dict:
    """The manifest of an engine built for `target` by this format version; else a CheckpointError
    that says what differs and how to rebuild."""
    folder = Path(folder)
    path = folder / MANIFEST
    rebuild = f"rebuild it: vila-edge build-engine QUANTIZED_CHECKPOINT -o {folder} --target {target}"
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
    if manifest.get("target") != target:
        raise CheckpointError(
            f"{folder}: engine built for target {manifest.get('target')!r}, but this backend runs {target!r} engines; {rebuild}"
        )
    return manifest

"""Read a safetensors header without loading tensors, and catch truncated files."""

import json
import struct
from pathlib import Path

from .errors import CheckpointError

_MAX_HEADER_BYTES = 100 * 1024 * 1024


def _is_entry(tensor) -> bool:
    """A header entry: {"dtype": name, "shape": [ints], "data_offsets": [begin, end]}."""
    def ints(v):
        return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)

    return (isinstance(tensor, dict) and isinstance(tensor.get("dtype"), str) and ints(tensor.get("shape"))
            and ints(tensor.get("data_offsets")) and len(tensor["data_offsets"]) == 2)  # fmt: skip


def read_header(path: Path) -> dict[str, dict]:
    """Tensor name -> {"dtype", "shape", "data_offsets"}; raises CheckpointError if unreadable or cut short."""
    return read_header_and_metadata(path)[0]


def read_header_and_metadata(path: Path) -> tuple[dict[str, dict], dict]:
    """(read_header's tensors, the file's `__metadata__` strings)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: empty or truncated safetensors file; copy it again from the source")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{path}: truncated or not a safetensors file; copy it again from the source")
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror}); check the path and permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    metadata = (header.pop("__metadata__", None) or {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(_is_entry(t) for t in header.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header; copy the file again from the source")
    data_bytes = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + data_bytes > size:
        raise CheckpointError(
            f"{path}: truncated ({size} bytes, header promises {8 + n + data_bytes}); "
            "the download or copy was cut short, copy it again"
        )
    return header, metadata

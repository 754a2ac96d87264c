"""Read a safetensors header without loading tensors, and catch truncated files."""

import json
import struct
from pathlib import Path

from .errors import CheckpointError

_MAX_HEADER_BYTES = 100 * 1024 * 1024


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
        raise CheckpointError(f"{path}: corrupt safetensors header; copy the file again from the source") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header; copy the file again from the source")
    metadata = header.pop("__metadata__", None) or {}
    data_bytes = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + data_bytes > size:
        raise CheckpointError(
            f"{path}: truncated ({size} bytes, header promises {8 + n + data_bytes}); "
            "the download or copy was cut short, copy it again"
        )
    return header, metadata

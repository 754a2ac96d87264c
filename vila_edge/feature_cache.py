"""Per-frame vision features of a video, cached on disk by content (numpy only; no torch).

An hour of video at 1 fps is 3,600 tower passes, so features are kept between runs, keyed by what produced them:

    ROOT/digests.json                  video sha256 by (resolved path, size, mtime_ns): unchanged files are not re-hashed
    ROOT/<entry>/manifest.json         FEATURE_CACHE_FORMAT: the video's sha256, the plan's indices, the model key,
                                       dtype, chunk size, frame shape, and each chunk's sha256 and shape
    ROOT/<entry>/chunk_00000.npy       features of plan positions [0, chunk_frames), then the next chunk, ...

<entry> is the sha256 of the canonical JSON of (video sha256, indices, key, dtype). Every file is written to a temporary
sibling, fsynced and renamed, and the manifest is rewritten after each chunk, so an interrupted run (Ctrl-C) leaves
whole chunks that the next run keeps; a chunk that fails its checks (checksum, shape, dtype) is reported in one line
and encoded again, never returned. A caller names in `key` everything on the model side that changes the features:

    plan = sample_plan(video, fps=1)
    cache = open_feature_cache(root, enabled)  # --feature-cache DIR / --no-feature-cache
    features = cache.features(plan, {"model": tower_weights_sha256, "image_size": 224}, encode, preprocess)
"""

import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .atomic import atomic_file
from .errors import MediaError, UsageError
from .formats import FEATURE_CACHE_FORMAT, FEATURE_DIGESTS_FILE, MANIFEST_FILE
from .video import VideoPlan, iter_frames

CHUNK_FRAMES = 32  # frames per chunk file: what an interrupted run can lose at most
HASH_BLOCK = 8 << 20  # bytes read at a time when hashing a video

Encode = Callable[[np.ndarray], np.ndarray]  # pixels [n, 3, S, S] float32 -> features [n, ...]
Preprocess = Callable[[Image.Image], np.ndarray]  # RGB image -> pixels [3, S, S] float32


def default_root() -> Path:
    """$VILA_EDGE_CACHE/features, else ~/.cache/vila-edge/features."""
    base = os.environ.get("VILA_EDGE_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "vila-edge") / "features"


def _report(path: Path, problem: str) -> None:
    print(f"{path}: {problem}", file=sys.stderr)


def _write_bytes(out: Path, data: bytes) -> None:
    """`data` as `out`, whole or not at all: a temporary sibling, fsynced, then renamed over `out`."""
    with atomic_file(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def _write_json(out: Path, obj) -> None:
    _write_bytes(out, (json.dumps(obj, indent=1) + "\n").encode())


def canonical_json(obj, what: str = "the cache key") -> str:
    """Sorted keys, no spaces, ASCII: one text per value, so equal values hash alike."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{what} {obj!r} is not plain JSON ({e}); give str, int, float, bool, list or dict values") \
            from None


# ---- video digests ----------------------------------------------------------------------------------------------


def _hash_file(path: Path) -> str:
    """sha256 of the file's bytes, read HASH_BLOCK at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_digests(index: Path) -> dict:
    if not index.exists():
        return {}
    try:
        found = json.loads(index.read_text())
        if not isinstance(found, dict):
            raise ValueError("not a JSON object")
        return found
    except (OSError, UnicodeDecodeError, ValueError) as e:
        _report(index, f"unreadable ({e}); starting a new digest index")
        return {}


def video_digest(path: str | Path, root: str | Path | None = None) -> str:
    """sha256 of a video file's bytes, remembered in ROOT/digests.json so that an unchanged file (same resolved path,
    size and mtime_ns) is not read again."""
    path = Path(path)
    try:
        before = path.stat()
    except OSError:
        raise MediaError(f"{path}: no such video file; check the path") from None
    index_path = Path(root if root is not None else default_root()) / FEATURE_DIGESTS_FILE
    name, index = str(path.resolve()), _read_digests(index_path)
    known = index.get(name)
    if (isinstance(known, dict) and known.get("size") == before.st_size and known.get("mtime_ns") == before.st_mtime_ns
            and _is_sha256(known.get("sha256"))):
        return known["sha256"]
    try:
        digest = _hash_file(path)
    except OSError as e:
        raise MediaError(f"{path}: cannot read this video ({e.strerror or e}); check its permissions") from None
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):  # not written to while hashed
        index[name] = {"size": after.st_size, "mtime_ns": after.st_mtime_ns, "sha256": digest}
        _write_json(index_path, index)
    return digest


# ---- one entry: a manifest and its chunks ---------------------------------------------------------------------


def _chunk_file(folder: Path, chunk: int) -> Path:
    return folder / f"chunk_{chunk:05d}.npy"


def _read_chunk(path: Path, record, expected: tuple, dtype: np.dtype) -> np.ndarray | str:
    """The chunk's array, or why it cannot be used."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if not isinstance(record, dict) or hashlib.sha256(data).hexdigest() != record.get("sha256"):
        return "checksum mismatch (truncated or overwritten)"
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        return f"not a .npy array ({e})"
    if array.dtype != dtype or array.shape != expected or list(array.shape) != record.get("shape"):
        return f"holds {array.dtype} {list(array.shape)}, the manifest says {dtype} {list(expected)}"
    return array


class _Entry:
    """A cache entry's folder and manifest; chunks are checked when read and recorded once written."""

    def __init__(self, folder: Path, header: dict, n_frames: int, chunk_frames: int):
        self.folder, self.manifest_path, self.header, self.n_frames = folder, folder / MANIFEST_FILE, header, n_frames
        loaded = self._load()
        self.fresh = loaded is None  # the manifest is still to be written (before the first chunk)
        self.manifest = loaded or {**header, "chunk_frames": chunk_frames, "frame_shape": None, "chunks": {}}

    def _problem(self, manifest) -> str | None:
        if not isinstance(manifest, dict) or manifest.get("format") != FEATURE_CACHE_FORMAT:
            return f"not a {FEATURE_CACHE_FORMAT} manifest"
        if any(canonical_json(manifest.get(k)) != canonical_json(v) for k, v in self.header.items()):
            return "its video, frames, key or dtype differ from the entry's name"
        size, shape, chunks = manifest.get("chunk_frames"), manifest.get("frame_shape"), manifest.get("chunks")
        if not (isinstance(size, int) and size >= 1 and isinstance(chunks, dict)):
            return "no chunk table"
        if shape is not None and not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            return f"frame_shape {shape!r} is not a shape"
        return None

    def _load(self) -> dict | None:
        """The manifest where it is whole and matches this entry; else None, reported, with the folder emptied."""
        if not self.folder.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
            problem = self._problem(manifest)
        except FileNotFoundError:
            problem = "missing"
        except (OSError, UnicodeDecodeError, ValueError, UsageError) as e:
            problem = f"unreadable ({e})"
        if problem is None:
            return manifest
        _report(self.manifest_path, f"{problem}; rebuilding this feature cache entry")
        for stale in self.folder.glob("chunk_*.npy"):
            stale.unlink(missing_ok=True)
        return None

    @property
    def chunk_frames(self) -> int:
        return self.manifest["chunk_frames"]

    def chunk_len(self, chunk: int) -> int:
        return min(self.chunk_frames, self.n_frames - chunk * self.chunk_frames)

    def valid_chunks(self, dtype: np.dtype):
        """(chunk, array) for every recorded chunk that passes its checks; the others are reported and dropped."""
        shape, chunks = self.manifest["frame_shape"], self.manifest["chunks"]
        n_chunks = -(-self.n_frames // self.chunk_frames)
        for name in sorted(chunks, key=lambda k: (len(k), k)):
            chunk = int(name) if name.isdigit() else -1
            path = _chunk_file(self.folder, chunk)
            if not 0 <= chunk < n_chunks or shape is None:
                found = f"chunk {name!r} does not fit a {self.n_frames}-frame entry"
            else:
                found = _read_chunk(path, chunks[name], (self.chunk_len(chunk), *shape), dtype)
            if isinstance(found, str):
                _report(path, f"{found}; encoding these frames again")
                del chunks[name]
                path.unlink(missing_ok=True)
            else:
                yield chunk, found

    def store(self, chunk: int, array: np.ndarray) -> None:
        """Writes one chunk (temporary file, fsync, rename), then the manifest that records it."""
        shape = self.manifest["frame_shape"]
        if shape is not None and list(array.shape[1:]) != shape:
            raise UsageError(f"{self.folder}: encode gives features {list(array.shape[1:])}, this entry holds {shape}; "
                             "the cache key must name everything that changes the features (weights, image size)")
        if self.fresh:  # a new entry: its manifest first, so that no folder is ever without one
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_json(self.manifest_path, self.manifest)
            self.fresh = False
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        data = buffer.getvalue()
        _write_bytes(_chunk_file(self.folder, chunk), data)
        self.manifest["frame_shape"] = list(array.shape[1:])
        self.manifest["chunks"][str(chunk)] = {"sha256": hashlib.sha256(data).hexdigest(), "shape": list(array.shape)}
        _write_json(self.manifest_path, self.manifest)


# ---- encoding -----------------------------------------------------------------------------------------------------


def _check_call(batch: int, key) -> None:
    if not (isinstance(batch, int) and batch >= 1):
        raise UsageError(f"batch {batch!r} must be 1 or more frames per encode call")
    if not isinstance(key, dict):
        raise UsageError(f"the cache key {key!r} must be a dict naming the model side (weights, image size, ...)")
    canonical_json(key)


def _encode_batch(encode: Encode, pixels: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    x = np.stack([np.asarray(p, dtype=np.float32) for p in pixels])  # [n, 3, S, S]
    out = np.asarray(encode(x))
    if out.ndim < 1 or out.shape[0] != len(pixels):
        raise ValueError(f"encode returned shape {out.shape} for {len(pixels)} frames; it must give [n, ...]")
    return out.astype(dtype, copy=False)


def _encode_chunks(plan: VideoPlan, todo: list[int], chunk_frames: int, encode: Encode, preprocess: Preprocess,
                   batch: int, dtype: np.dtype, bar):
    """(chunk, features [n, ...]) for the chunks in `todo`, in order, decoding only their frames."""
    n, wanted = len(plan), set(todo)
    skip = {pos for pos in range(n) if pos // chunk_frames not in wanted}
    pixels, parts = [], []
    for pos, image in iter_frames(plan, skip):
        pixels.append(preprocess(image))
        last = pos == min((pos // chunk_frames + 1) * chunk_frames, n) - 1  # the chunk's last frame
        if len(pixels) == batch or last:
            parts.append(_encode_batch(encode, pixels, dtype))
            bar.update(len(pixels))
            pixels = []
        if last:
            if len({p.shape[1:] for p in parts}) > 1:
                raise ValueError(f"encode returned features of shapes {sorted({p.shape[1:] for p in parts})} "
                                 "within one video; one model gives one shape")
            yield pos // chunk_frames, np.concatenate(parts)
            parts = []


class _Frames:
    """The [n_frames, ...] result, allocated once the first chunk gives the frame shape."""

    def __init__(self, n_frames: int, dtype: np.dtype):
        self.n_frames, self.dtype, self.array = n_frames, dtype, None

    def put(self, start: int, features: np.ndarray) -> None:
        if self.array is None:
            self.array = np.empty((self.n_frames, *features.shape[1:]), self.dtype)
        if features.shape[1:] != self.array.shape[1:]:
            raise ValueError(f"encode returned features {features.shape[1:]} after {self.array.shape[1:]}")
        self.array[start : start + len(features)] = features


def _bar(total: int, initial: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="encoding frames", unit="frame", file=sys.stderr,
                dynamic_ncols=True, disable=not progress or initial == total)


class FeatureCache:
    """Features of video frames, kept under `root` ($VILA_EDGE_CACHE/features, else ~/.cache/vila-edge/features)."""

    def __init__(self, root: str | Path | None = None, chunk_frames: int = CHUNK_FRAMES):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.chunk_frames = chunk_frames

    def entry_folder(self, plan: VideoPlan, key: dict, dtype=np.float16) -> Path:
        """Where the features of this plan under this key live: ROOT/sha256(canonical JSON of the header)."""
        return self.root / _entry_name(_header(video_digest(plan.path, self.root), plan, key, np.dtype(dtype)))

    def features(self, plan: VideoPlan, key: dict, encode: Encode, preprocess: Preprocess, batch: int = 8,
                 progress: bool = True, dtype=np.float16) -> np.ndarray:
        """encode(preprocess(frame)) for the plan's frames: [len(plan), ...] in `dtype`, read from the cache where a
        previous run stored them and encoded (then stored) where not; only the missing chunks' frames are decoded."""
        _check_call(batch, key)
        dtype = np.dtype(dtype)
        try:
            header = _header(video_digest(plan.path, self.root), plan, key, dtype)
            entry = _Entry(self.root / _entry_name(header), header, len(plan), self.chunk_frames)
            result = _Frames(len(plan), dtype)
            for chunk, array in entry.valid_chunks(dtype):
                result.put(chunk * entry.chunk_frames, array)
            done = {int(c) for c in entry.manifest["chunks"]}
            todo = [c for c in range(-(-len(plan) // entry.chunk_frames)) if c not in done]
            cached = len(plan) - sum(entry.chunk_len(c) for c in todo)
            with _bar(len(plan), cached, progress) as bar:
                for chunk, array in _encode_chunks(plan, todo, entry.chunk_frames, encode, preprocess, batch, dtype,
                                                   bar):
                    entry.store(chunk, array)
                    result.put(chunk * entry.chunk_frames, array)
        except OSError as e:  # reads of chunks and manifests are checked where they happen: this is a write
            raise UsageError(f"{e.filename or self.root}: cannot write the feature cache there ({e.strerror or e}); "
                             "give another cache folder or run without the feature cache") from None
        return result.array


def _header(digest: str, plan: VideoPlan, key: dict, dtype: np.dtype) -> dict:
    """What the features depend on, written in the manifest and hashed into the entry's name."""
    return {"format": FEATURE_CACHE_FORMAT, "video_sha256": digest, "indices": list(plan.indices), "key": key,
            "dtype": dtype.name}


def _entry_name(header: dict) -> str:
    return hashlib.sha256(canonical_json(header).encode()).hexdigest()


class NullCache:
    """FeatureCache's interface without the disk: every call encodes every frame."""

    root = None

    def features(self, plan: VideoPlan, key: dict, encode: Encode, preprocess: Preprocess, batch: int = 8,
                 progress: bool = True, dtype=np.float16) -> np.ndarray:
        """encode(preprocess(frame)) for the plan's frames, [len(plan), ...] in `dtype`; nothing is stored."""
        _check_call(batch, key)
        dtype, result = np.dtype(dtype), _Frames(len(plan), np.dtype(dtype))
        n_chunks = -(-len(plan) // CHUNK_FRAMES)
        with _bar(len(plan), 0, progress) as bar:
            for chunk, array in _encode_chunks(plan, list(range(n_chunks)), CHUNK_FRAMES, encode, preprocess, batch,
                                               dtype, bar):
                result.put(chunk * CHUNK_FRAMES, array)
        return result.array


def open_feature_cache(root: str | Path | None = None, enabled: bool = True) -> FeatureCache | NullCache:
    """What `--feature-cache DIR` (root) and `--no-feature-cache` (enabled=False) ask for."""
    return FeatureCache(root) if enabled else NullCache()

"""vila_edge.feature_cache: features of coded test videos (coded_video.py) cached, resumed after Ctrl-C, checked and
rebuilt when damaged; the expected features are computed here from frames OpenCV decodes front to back."""

import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from coded_video import frame_number, write_coded_video

import vila_edge.feature_cache as fc
import vila_edge.video as video
from vila_edge.errors import UsageError
from vila_edge.feature_cache import FeatureCache, NullCache, open_feature_cache, video_digest
from vila_edge.video import sample_plan

KEY = {"model": "tiny-tower-sha256:0123", "image_size": 32}


def preprocess(image):
    """RGB image -> [3, 32, 32] float32 in [0, 1]."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


class Encoder:
    """A stand-in tower: per frame, its number and mean colour, [n, 2, 2]; records which frames each call saw."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.fail_on_call = [], fail_on_call

    def __call__(self, pixels):
        assert pixels.dtype == np.float32 and pixels.shape[1:] == (3, 32, 32)
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            raise KeyboardInterrupt
        numbers = [frame_number(p) for p in pixels]
        self.calls.append(numbers)
        mean = pixels.mean(axis=(1, 2, 3))
        return np.stack([np.stack([numbers, mean], 1), np.stack([mean * 2, np.full_like(mean, 0.5)], 1)], 1)

    @property
    def frames(self) -> list[int]:
        return [n for call in self.calls for n in call]


def never(pixels):
    raise AssertionError("encode was called on a cached entry")


def expected_features(path, indices):
    """The features of those frames, from OpenCV's own front-to-back read and one encode call."""
    cap, frames = cv2.VideoCapture(str(path)), {}
    for i in range(max(indices) + 1):
        ok, frame = cap.read()
        assert ok
        if i in indices:
            frames[i] = preprocess(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return Encoder()(np.stack([frames[i] for i in indices])).astype(np.float16)


@pytest.fixture
def clip(tmp_path):
    return write_coded_video(tmp_path / "clip.avi", 90, fps=30)


@pytest.fixture
def cache(tmp_path):
    return FeatureCache(tmp_path / "cache")


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_features_are_the_planned_frames_and_a_second_call_never_encodes(clip, cache, capsys):
    plan = sample_plan(clip, fps=30)  # 90 frames: chunks of 32, 32 and 26
    encoder = Encoder()
    first = cache.features(plan, KEY, encoder, preprocess, batch=8, progress=False)
    assert first.dtype == np.float16 and first.shape == (90, 2, 2)
    np.testing.assert_array_equal(first, expected_features(clip, list(plan.indices)))
    assert encoder.frames == list(range(90)) and {len(c) for c in encoder.calls} == {8, 2}  # 32 = 4 x 8; 26 = 3 x 8 + 2
    again = cache.features(plan, KEY, never, preprocess, batch=8, progress=False)
    np.testing.assert_array_equal(again, first)
    folder = cache.entry_folder(plan, KEY)
    assert sorted(p.name for p in folder.iterdir()) == ["chunk_00000.npy", "chunk_00001.npy", "chunk_00002.npy",
                                                          "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["indices"] == list(range(90)) and manifest["key"] == KEY and manifest["frame_shape"] == [2, 2]
    for name, record in manifest["chunks"].items():
        data = (folder / f"chunk_{int(name):05d}.npy").read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert stderr_lines(capsys) == []


def test_a_sampled_plan_caches_its_own_frames_with_float32(clip, cache):
    plan = sample_plan(clip, fps=2, start=0.5)  # 15, 30, ..., 75
    out = cache.features(plan, KEY, Encoder(), preprocess, batch=3, progress=False, dtype=np.float32)
    want = Encoder()(np.stack([preprocess(im) for _, im in video.iter_frames(plan)]))
    np.testing.assert_array_equal(out, want.astype(np.float32))
    assert out[:, 0, 0].tolist() == list(plan.indices)
    assert cache.entry_folder(plan, KEY, np.float32) != cache.entry_folder(plan, KEY)  # dtype is part of the entry


def test_ctrl_c_after_two_chunks_leaves_a_resumable_entry(clip, cache, monkeypatch):
    plan = sample_plan(clip, fps=30)
    with pytest.raises(KeyboardInterrupt):
        cache.features(plan, KEY, Encoder(fail_on_call=9), preprocess, batch=8, progress=False)  # 4 calls a chunk
    folder = cache.entry_folder(plan, KEY)
    assert sorted(p.name for p in folder.iterdir()) == ["chunk_00000.npy", "chunk_00001.npy", "manifest.json"]
    assert sorted(json.loads((folder / "manifest.json").read_text())["chunks"]) == ["0", "1"]
    retrieved = []
    real = video.open_video

    class Spy:  # the real capture, noting each retrieve() (a decoded frame)
        def __init__(self, path):
            self.cap = real(path)

        def grab(self):
            return self.cap.grab()

        def retrieve(self):
            retrieved.append(1)
            return self.cap.retrieve()

        def release(self):
            self.cap.release()

    monkeypatch.setattr(video, "open_video", Spy)
    encoder = Encoder()
    resumed = cache.features(plan, KEY, encoder, preprocess, batch=8, progress=False)
    assert encoder.frames == list(range(64, 90)) and len(retrieved) == 26
    uninterrupted = FeatureCache(cache.root.parent / "other").features(plan, KEY, Encoder(), preprocess, progress=False)
    np.testing.assert_array_equal(resumed, uninterrupted)


C0, C1 = "chunk_00000.npy", "chunk_00001.npy"


@pytest.mark.parametrize("interrupted, files, recorded", [(7, [C0, C1], ["0", "1"]), (6, [C0, C1], ["0"]), (3, [], [])])
def test_ctrl_c_while_writing_leaves_no_partial_file(clip, cache, monkeypatch, interrupted, files, recorded):
    plan = sample_plan(clip, fps=30)
    real_fsync, calls = os.fsync, []

    def interrupted_fsync(fd):  # after a file's bytes, before its rename
        calls.append(fd)
        # digests.json, the new entry's manifest, chunk 0 (3), manifest, chunk 1, manifest (6), chunk 2 (7)
        if len(calls) == interrupted:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(fc.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        cache.features(plan, KEY, Encoder(), preprocess, progress=False)
    folder = cache.entry_folder(plan, KEY)
    assert sorted(p.name for p in folder.iterdir()) == [*files, "manifest.json"]  # no temporary file left
    assert sorted(json.loads((folder / "manifest.json").read_text())["chunks"]) == recorded
    monkeypatch.setattr(fc.os, "fsync", real_fsync)
    encoder = Encoder()
    out = cache.features(plan, KEY, encoder, preprocess, progress=False)
    assert encoder.frames == list(range(32 * len(recorded), 90))  # a chunk the manifest does not name is redone
    np.testing.assert_array_equal(out, expected_features(clip, list(plan.indices)))


def garble(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wrong_dtype(path):  # a valid .npy of the right shape in float32, recorded with its own checksum
    array = np.load(path).astype(np.float32)
    np.save(path, array)
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["chunks"]["1"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [(garble, "checksum mismatch"), (truncate, "checksum mismatch"),
                                             (wrong_dtype, "holds float32"), (os.remove, "unreadable")])
def test_a_damaged_chunk_is_reported_and_only_it_is_encoded_again(clip, cache, capsys, damage, message):
    plan = sample_plan(clip, fps=30)
    first = cache.features(plan, KEY, Encoder(), preprocess, progress=False)
    chunk = cache.entry_folder(plan, KEY) / "chunk_00001.npy"
    damage(chunk)
    encoder = Encoder()
    rebuilt = cache.features(plan, KEY, encoder, preprocess, progress=False)
    assert encoder.frames == list(range(32, 64))
    np.testing.assert_array_equal(rebuilt, first)
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"{chunk}: {message}") and "Traceback" not in lines[0], lines
    np.testing.assert_array_equal(cache.features(plan, KEY, never, preprocess, progress=False), first)  # whole again


@pytest.mark.parametrize("damage, message", [(os.remove, "missing"),
                                             (lambda p: p.write_text('{"chunks": {'), "unreadable"),
                                             (lambda p: p.write_text('{"format": "other/1"}'), "not a vila_edge"),
                                             (lambda p: p.write_bytes(b"\xff\xfe\x00"), "unreadable")])
def test_a_damaged_manifest_is_reported_and_the_entry_rebuilt(clip, cache, capsys, damage, message):
    plan = sample_plan(clip, fps=30)
    first = cache.features(plan, KEY, Encoder(), preprocess, progress=False)
    manifest = cache.entry_folder(plan, KEY) / "manifest.json"
    damage(manifest)
    encoder = Encoder()
    rebuilt = cache.features(plan, KEY, encoder, preprocess, progress=False)
    assert encoder.frames == list(range(90))
    np.testing.assert_array_equal(rebuilt, first)
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"{manifest}: {message}"), lines
    assert "rebuilding" in lines[0]
    np.testing.assert_array_equal(cache.features(plan, KEY, never, preprocess, progress=False), first)


def test_a_different_video_or_key_is_a_different_entry(clip, cache, tmp_path):
    plan = sample_plan(clip, fps=10)
    first = cache.features(plan, KEY, Encoder(), preprocess, progress=False)
    folder = cache.entry_folder(plan, KEY)
    encoder = Encoder()
    cache.features(plan, {**KEY, "image_size": 64}, encoder, preprocess, progress=False)
    assert len(encoder.frames) == 30 and cache.entry_folder(plan, {**KEY, "image_size": 64}) != folder
    write_coded_video(clip, 90, fps=30, first=100)  # same path and length, other bytes
    os.utime(clip, ns=(1, 1))
    plan = sample_plan(clip, fps=10)
    encoder = Encoder()
    second = cache.features(plan, KEY, encoder, preprocess, progress=False)
    assert encoder.frames == [(100 + i) % 256 for i in plan.indices]
    assert cache.entry_folder(plan, KEY) != folder and not np.array_equal(second, first)
    np.testing.assert_array_equal(second, expected_features(clip, list(plan.indices)))


def test_the_digest_is_the_files_sha256_and_is_not_recomputed_for_an_unchanged_file(clip, tmp_path, monkeypatch):
    hashed = []
    real = fc._hash_file
    monkeypatch.setattr(fc, "_hash_file", lambda path: hashed.append(path) or real(path))
    monkeypatch.setattr(fc, "HASH_BLOCK", 1000)  # many blocks: the streamed hash is the whole file's
    root = tmp_path / "cache"
    want = hashlib.sha256(clip.read_bytes()).hexdigest()
    assert video_digest(clip, root) == want and len(hashed) == 1
    assert video_digest(clip, root) == want and len(hashed) == 1  # remembered in digests.json
    index = json.loads((root / "digests.json").read_text())
    assert index == {str(clip.resolve()): {"size": clip.stat().st_size, "mtime_ns": clip.stat().st_mtime_ns,
                                           "sha256": want}}
    os.utime(clip, ns=(10**18, 10**18))  # same bytes, new mtime: hashed again, same digest
    assert video_digest(clip, root) == want and len(hashed) == 2
    with open(clip, "ab") as f:
        f.write(b"\0")
    os.utime(clip, ns=(10**18, 10**18))  # new size, old mtime
    assert video_digest(clip, root) == hashlib.sha256(clip.read_bytes()).hexdigest() != want and len(hashed) == 3
    (root / "digests.json").write_text("[not json")
    assert video_digest(clip, root) == hashlib.sha256(clip.read_bytes()).hexdigest() and len(hashed) == 4


def test_without_a_cache_every_call_encodes_and_nothing_is_written(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("VILA_EDGE_CACHE", str(tmp_path / "env"))
    plan = sample_plan(clip, fps=30)
    null = open_feature_cache(enabled=False)
    assert isinstance(null, NullCache)
    for _ in range(2):
        encoder = Encoder()
        out = null.features(plan, KEY, encoder, preprocess, batch=5, progress=False)
        assert encoder.frames == list(range(90))
        np.testing.assert_array_equal(out, expected_features(clip, list(plan.indices)))
    assert not (tmp_path / "env").exists()


def test_the_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("VILA_EDGE_CACHE", str(tmp_path / "env"))
    assert FeatureCache().root == tmp_path / "env" / "features" == open_feature_cache().root
    monkeypatch.delenv("VILA_EDGE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert FeatureCache().root == tmp_path / "home" / ".cache" / "vila-edge" / "features"
    assert FeatureCache("~/x").root == tmp_path / "home" / "x"


def test_the_progress_bar_starts_at_the_cached_frames(clip, cache, capsys):
    plan = sample_plan(clip, fps=30)
    with pytest.raises(KeyboardInterrupt):
        cache.features(plan, KEY, Encoder(fail_on_call=9), preprocess, progress=False)
    capsys.readouterr()
    cache.features(plan, KEY, Encoder(), preprocess, progress=True)
    err = capsys.readouterr().err
    assert "encoding frames" in err and "64/90" in err and "90/90" in err


def test_bad_calls_are_one_line_errors(clip, cache):
    plan = sample_plan(clip, fps=1)
    for key, batch in (({"model": object()}, 8), (["model"], 8), ({"x": float("nan")}, 8), (KEY, 0)):
        with pytest.raises(UsageError) as e:
            cache.features(plan, key, Encoder(), preprocess, batch=batch, progress=False)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="must give"):
        cache.features(plan, KEY, lambda x: np.zeros((1, 4)), preprocess, progress=False)
    cache.features(plan, KEY, Encoder(), preprocess, progress=False)
    (cache.entry_folder(plan, KEY) / "chunk_00000.npy").unlink()  # so that its frames are encoded again
    with pytest.raises(UsageError, match="the cache key must name"):  # same key, another model's features
        cache.features(plan, KEY, lambda x: np.zeros((len(x), 7)), preprocess, progress=False)


CORE_ONLY = """
import sys
import numpy as np

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(name + " is blocked in this test")

sys.meta_path.insert(0, Block())
from vila_edge.feature_cache import FeatureCache
from vila_edge.video import sample_plan

plan = sample_plan(sys.argv[1], fps=10)
pre = lambda im: np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255
out = FeatureCache(sys.argv[2]).features(plan, {{"model": "m"}}, lambda x: x.mean(axis=(2, 3)), pre, progress=False)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
assert not loaded, loaded
print(out.shape)
"""


def test_sampling_and_the_cache_run_without_torch(clip, tmp_path):
    from conftest import QUANTIZE_EXTRA

    script = CORE_ONLY.format(blocked=QUANTIZE_EXTRA)
    run = subprocess.run([sys.executable, "-c", script, str(clip), str(tmp_path / "cache")], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(30, 3)"

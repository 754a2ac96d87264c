"""Outputs (folders and files) appear whole or not at all: write to a temporary sibling, rename at the end."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UsageError


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False):
    """Yields a temporary folder beside `out`; on success it becomes `out`, on any error it is removed."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: already exists; remove it or choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the result should look like any other folder
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(out: str | Path):
    """Yields a temporary path beside `out` to write; on success it replaces `out`, on any error it is removed."""
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=out.suffix, dir=out.parent)
    except OSError as e:
        raise UsageError(f"{out}: cannot write there ({e.strerror or e}: {e.filename})") from None
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~current_umask())
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(out: str | Path, text: str) -> Path:
    with atomic_file(out) as tmp:
        tmp.write_text(text)
    return Path(out)

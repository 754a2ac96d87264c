"""Output folders appear whole or not at all: write to a temporary sibling, rename at the end."""

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

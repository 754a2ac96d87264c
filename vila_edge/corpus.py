"""Real English text with no download: the Python standard library's docstrings.

Two disjoint splits, so perplexity is measured on text the quantizer never calibrated on:
`calib` and `eval` read different modules, and `eval` drops any docstring `calib` also has
(inherited methods repeat the same text across modules).
"""

import importlib
import inspect
from pathlib import Path

SPLITS = {
    "calib": ("os", "json", "collections", "pathlib", "inspect", "functools", "itertools", "re", "string",
              "textwrap", "shutil", "subprocess", "logging", "argparse", "unittest", "typing", "dataclasses",
              "enum", "datetime", "builtins"),
    "eval": ("asyncio", "email.message", "http.client", "urllib.request", "xml.etree.ElementTree", "decimal",
             "fractions", "statistics", "random", "heapq", "bisect", "csv", "sqlite3", "tarfile", "zipfile",
             "socket", "threading", "multiprocessing", "concurrent.futures", "pickle", "copy", "pprint", "difflib",
             "calendar", "locale", "gettext", "codecs", "io", "tempfile", "glob", "fnmatch", "hashlib", "uuid",
             "ipaddress", "configparser", "plistlib", "wave", "smtplib", "ftplib", "imaplib", "mailbox", "queue",
             "sched", "selectors", "shlex", "struct", "tokenize", "traceback", "warnings", "weakref", "zoneinfo"),
}


def _docstrings(module_name: str) -> list[str]:
    """The module's own docstring, then those of its public functions and classes and their methods."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # a stripped-down Python (no sqlite3, say) just gives less text
        return []
    objects = [module]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        objects.append(obj)
        if inspect.isclass(obj):
            objects += [m for n, m in sorted(vars(obj).items()) if not n.startswith("_") and inspect.isroutine(m)]
    docs = []
    for obj in objects:
        doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
        if doc and len(doc.split()) >= 8:
            docs.append(inspect.cleandoc(doc))
    return docs


def stdlib_docs(split: str) -> list[str]:
    """The docstrings of one split, in a fixed order, without duplicates."""
    seen: set[str] = set()
    if split == "eval":
        seen.update(stdlib_docs("calib"))
    docs = []
    for module_name in SPLITS[split]:
        for doc in _docstrings(module_name):
            if doc not in seen:
                seen.add(doc)
                docs.append(doc)
    return docs


def write_stdlib_text(path: str | Path, split: str) -> Path:
    """One docstring per paragraph, blank-line separated: a plain text file for --calib text: or --eval-text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(stdlib_docs(split)) + "\n", encoding="utf-8")
    return path

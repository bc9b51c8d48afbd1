"""What a run JSON records so that a number can be traced and reproduced.

* :func:`settings_key` -- a short hash of everything that changes a run's numbers; results of
  different settings live under different keys and are never overwritten or mixed.
* :func:`environment` -- command line, ssp version and git commit, library versions, platform.
* :func:`file_sha256`, :func:`sample_list_digest` -- digests of inputs (split files, image lists,
  feature-cache files).
* :func:`clean_floats` -- drop float noise (``2.8600000000000003`` -> ``2.86``) before a value is
  written or shown.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

__all__ = ["settings_key", "canonical_json", "environment", "file_sha256", "sample_list_digest",
           "clean_floats", "KEY_LENGTH"]

KEY_LENGTH = 10  # hex digits of the settings key shown in paths and tables


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON (the input of :func:`settings_key`)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def settings_key(settings: Any) -> str:
    """First :data:`KEY_LENGTH` hex digits of the SHA-256 of ``settings``' canonical JSON."""
    return hashlib.sha256(canonical_json(clean_floats(settings)).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def clean_floats(value: Any, digits: int = 12) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (recursively through
    dicts, lists and tuples): removes binary noise such as ``2.8600000000000003`` while keeping
    far more precision than any accuracy or grid value needs. Other values are returned as given."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if value == value and abs(value) != float("inf") else value
    if isinstance(value, dict):
        return {k: clean_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_floats(v, digits) for v in value]
    try:  # numpy / torch scalars
        import numpy as np

        if isinstance(value, np.floating):
            return clean_floats(float(value), digits)
        if isinstance(value, np.integer):
            return int(value)
    except ImportError:  # pragma: no cover
        pass
    return value


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sample_list_digest(samples: Iterable[Any], root: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 over the ordered (path relative to ``root``, label) of ``samples``: identifies a
    split's image list without opening or stat-ing any image."""
    h = hashlib.sha256()
    base = os.path.abspath(root) if root is not None else None
    for s in samples:
        path = os.path.abspath(os.fspath(s.path))
        rel = os.path.relpath(path, base) if base else path
        h.update(json.dumps([rel.replace(os.sep, "/"), int(s.label)]).encode("utf-8") + b"\n")
    return h.hexdigest()


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit of the ssp checkout (with ``+dirty`` when it has local changes), if it is one."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) if commit else None


def _version(module: str) -> str | None:
    if module not in sys.modules:
        try:
            from importlib.metadata import version

            return version({"open_clip": "open_clip_torch"}.get(module, module))
        except Exception:
            return None
    return getattr(sys.modules[module], "__version__", None)


def environment(device: Any = None) -> dict:
    """The software and machine a run was made with."""
    from . import __version__

    command = None
    if sys.argv and sys.argv[0]:
        argv0 = Path(sys.argv[0])
        # `python -m ssp.cli` puts the module's file in argv[0]
        head = f"python -m ssp.{argv0.stem}" if argv0.suffix == ".py" and argv0.parent.name == "ssp" else argv0.name
        command = " ".join([head] + [shlex.quote(a) for a in sys.argv[1:]])
    return {
        "command": command,
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "ssp_version": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "open_clip": _version("open_clip"),
        "numpy": _version("numpy"),
        "device": None if device is None else str(device),
    }

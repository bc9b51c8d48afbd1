"""Files and JSON: atomic writes, digests, canonical JSON, JSON-ready values.

* :func:`atomic_path`, :func:`write_text_atomic`, :func:`write_json_atomic` -- a file is either
  complete or absent, never half-written.
* :func:`file_sha256` -- a file's digest (computed once per path, size and mtime).
* :func:`canonical_json` -- sorted-key compact JSON, the input of settings keys.
* :func:`clean_floats` -- drop float noise (``2.8600000000000003`` -> ``2.86``).
* :func:`jsonable` -- tensors, arrays, numpy scalars and paths -> JSON values.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic", "file_sha256", "canonical_json",
           "clean_floats", "jsonable"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds, fsync it and rename it over
    ``path``, so ``path`` only ever holds a complete file. On failure the temp file is removed
    and the exception propagates. Temp names: ``.<stem>.<pid>.<random>.tmp``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically: never a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def check_writable_file(path: str | os.PathLike[str]) -> Path:
    """Raise, before any work, when a file cannot be written at ``path``: ``IsADirectoryError``
    when it is a folder, ``NotADirectoryError`` when a parent is a file, ``PermissionError`` when
    the folder it would go in (or be created in) is not writable. Nothing is created."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path, e.g. {path / 'out.json'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {folder} is a file, not a folder")
    probe = folder / f".ssp-write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"cannot write {path}: {folder} is not writable ({err.strerror or err})") from None
    return path


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """``payload`` as indented JSON (values through :func:`jsonable`, float noise removed by
    :func:`clean_floats`; NaN / inf written as null), atomically."""
    return write_text_atomic(path, json.dumps(clean_floats(jsonable(payload)), indent=2, default=str,
                                              allow_nan=False) + "\n")


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, streamed, computed once per (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON (the input of settings keys)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


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
    try:  # numpy scalars
        import numpy as np

        if isinstance(value, np.floating):
            return clean_floats(float(value), digits)
        if isinstance(value, np.integer):
            return int(value)
    except ImportError:  # pragma: no cover
        pass
    return value


def jsonable(value: Any) -> Any:
    """Tensors / arrays -> lists, numpy scalars -> Python numbers, non-finite floats -> None,
    paths -> strings (recursively through dicts, lists and tuples)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (bool, int, float, str)):
        return jsonable(value.tolist())
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        f = float(value)
        return f if math.isfinite(f) else None
    if type(value).__name__.startswith(("int", "uint")) and not isinstance(value, bool):
        return int(value)
    return value

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

from ssp._io import canonical_json, clean_floats, write_json_atomic
from ssp.report.tables import RUN_SUFFIX

KEY_LENGTH = 10  # hex digits of the settings key shown in paths and tables


def settings_key(settings: Any) -> str:
    """First :data:`KEY_LENGTH` hex digits of the SHA-256 of ``settings``' canonical JSON."""
    return hashlib.sha256(canonical_json(clean_floats(settings)).encode("utf-8")).hexdigest()[:KEY_LENGTH]


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
    from ssp import __version__

    command = None
    if sys.argv and sys.argv[0]:
        argv0 = Path(sys.argv[0])
        # `python -m ssp.cli.fewshot` puts the module's file in argv[0]
        head = (f"python -m ssp.cli.{argv0.stem}" if argv0.suffix == ".py" and argv0.parent.name == "cli"
                else argv0.name)
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



def _safe(text: str) -> str:
    return str(text).replace("/", "_").replace(":", "_").replace("\\", "_")


def run_filename(record: dict) -> str:
    """``<dataset>/<backbone>/<method>/<settings_key>/<K>shot_seed<S>.run.json`` (filesystem-safe);
    records without a ``settings_key`` (older files) keep the flat
    ``<dataset>/<backbone>/<method>_<K>shot_seed<S>.run.json``."""
    backbone = _safe(record["backbone"]["name"])
    method = _safe(record["method"].replace("+", "_plus_"))
    key = record.get("settings_key")
    if key:
        return (f"{_safe(record['dataset'])}/{backbone}/{method}/{_safe(key)}/"
                f"{record['shots']}shot_seed{record['seed']}{RUN_SUFFIX}")
    return f"{record['dataset']}/{backbone}/{method}_{record['shots']}shot_seed{record['seed']}{RUN_SUFFIX}"


def find_run(output_dir: Path, record: dict) -> dict | None:
    """The finished run under ``output_dir`` with ``record``'s coordinates and the same settings
    (``record`` needs dataset, backbone name, method, shots, seed, settings_key, settings), or None.
    A file under the same key with different settings (a hash collision) is an error."""
    path = Path(output_dir) / run_filename(record)
    if not path.is_file():
        return None
    try:
        existing = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"results file {path} is unreadable ({err}); delete it to re-run that run") from err
    if existing.get("settings") != json.loads(json.dumps(record.get("settings"), default=str)):
        raise ValueError(f"results file {path} holds other settings under the same key "
                         f"{record.get('settings_key')}; move it away to re-run")
    return existing


def write_run(output_dir: Path, record: dict) -> Path:
    return write_json_atomic(Path(output_dir) / run_filename(record), record)

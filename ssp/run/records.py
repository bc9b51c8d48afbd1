"""Run records: one JSON file per (dataset, backbone, method, shots, seed, settings).

* :func:`run_stub` -- a run's coordinates and settings, and :func:`settings_key`, a short hash of
  everything that changes its numbers: results of different settings live under different keys and
  are never overwritten or mixed.
* :func:`make_record` -- the run JSON: coordinates, settings, protocol, provenance, results.
* :func:`environment` -- command line, ssp version and git commit, library versions, platform.
* :func:`sample_list_digest` -- a digest of an image list.
* :func:`run_filename`, :func:`find_run`, :func:`write_run`, :func:`find_runs` -- where a run's file
  lives (``*`` :data:`RUN_SUFFIX`), reading a finished one back (resume), writing one atomically
  (with its per-sample / per-class arrays in a compressed ``.samples.npz`` beside it, named in the
  JSON with its SHA-256), the paths of every run file under a folder.
* :class:`RunLock` -- a per-run lock file, so that parallel invocations share the work.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from ssp import __version__
from ssp._io import atomic_path, canonical_json, clean_floats, file_sha256, jsonable, write_json_atomic
from ssp.methods.registry import parse_method

KEY_LENGTH = 10  # hex digits of the settings key shown in paths and tables
#: The ending of every run file's name (the report stage finds runs by it).
RUN_SUFFIX = ".run.json"
#: The reliability settings of defaults.yaml (``metrics``): runs under them keep their pre-metrics keys.
DEFAULT_METRICS = {"conformal_alpha": 0.1, "calibration_bins": 15}
#: The ending of a run's per-sample / per-class arrays file, beside its JSON.
SAMPLES_SUFFIX = ".samples.npz"


@dataclass
class MethodResult:
    """What one run of one method produced: the results part of its run JSON (:func:`make_record`)."""

    method: str
    hyperparameters: dict
    val_accuracy: float | None      # None: nothing chosen on validation (test-time protocol)
    test_accuracy: float
    timings: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)   # raised while fitting and searching
    model: Any = field(default=None, repr=False)        # the fitted estimator (not recorded)
    reliability: dict | None = None     # ssp.metrics.reliability's metrics of the test logits
    samples: dict | None = field(default=None, repr=False)   # per-sample / per-class arrays, saved beside the JSON


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
    """The software and machine a run was made with (``world_size``: processes under torchrun)."""
    # imported here: ssp.distributed imports torch, and `ssp-fewshot --help` reads this module
    # (ssp.run.protocols, for the --protocol choices)
    from ssp import distributed

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
        "world_size": distributed.env_world_size(),
    }



def _safe(text: str) -> str:
    return str(text).replace("/", "_").replace(":", "_").replace("\\", "_")


def run_filename(record: dict) -> str:
    """``<dataset>/<backbone>/<method>/<settings_key>/<K>shot_seed<S>.run.json`` (filesystem-safe):
    where a run's file lives in its output folder; records without a ``settings_key`` (older
    files) keep the flat ``<dataset>/<backbone>/<method>_<K>shot_seed<S>.run.json``."""
    backbone = _safe(record["backbone"]["name"])
    method = _safe(record["method"])  # "ape+ssp": "+" is safe in file names on every system
    key = record.get("settings_key")
    if key:
        return (f"{_safe(record['dataset'])}/{backbone}/{method}/{_safe(key)}/"
                f"{record['shots']}shot_seed{record['seed']}{RUN_SUFFIX}")
    return f"{record['dataset']}/{backbone}/{method}_{record['shots']}shot_seed{record['seed']}{RUN_SUFFIX}"


def reliability_is_current(record: dict) -> bool:
    """Whether ``record``'s reliability metrics follow today's definitions
    (:data:`ssp.metrics.RELIABILITY_VERSION`); a record without any (made before they existed) is
    kept as it is and reports with empty reliability cells."""
    from ssp.metrics import RELIABILITY_VERSION  # here: this module loads for --help, numpy-free

    rel = record.get("reliability")
    return not isinstance(rel, dict) or rel.get("version", 1) == RELIABILITY_VERSION


def find_run(output_dir: Path, record: dict, *, outdated_ok: bool = False) -> dict | None:
    """The finished run under ``output_dir`` with ``record``'s coordinates and the same settings
    (``record`` needs dataset, backbone name, method, shots, seed, settings_key, settings), or None.
    A file under the same key with different settings (a hash collision) is an error. A run whose
    reliability metrics follow older definitions (:func:`reliability_is_current`) counts as not
    done, so it is run again and its file replaced, unless ``outdated_ok``."""
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
    return existing if outdated_ok or reliability_is_current(existing) else None


def write_run(output_dir: Path, record: dict, samples: dict | None = None) -> Path:
    """Write ``record`` atomically; ``samples`` (name -> numpy array) go first into
    ``<run>.samples.npz`` beside it, which the record's ``samples`` field names with its SHA-256
    and array shapes (the JSON is the run's completion mark, so it is written last)."""
    import numpy as np

    path = Path(output_dir) / run_filename(record)
    if samples:
        npz = path.with_name(path.name[: -len(RUN_SUFFIX)] + SAMPLES_SUFFIX)
        npz.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(npz) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **samples)
        record["samples"] = {"file": npz.name, "sha256": file_sha256(npz), "format": "npz",
                             "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in samples.items()}}
    return write_json_atomic(path, record)


def find_runs(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The run files under ``output_dir`` (recursively, sorted by path); none when it is no folder."""
    return sorted(Path(output_dir).rglob(f"*{RUN_SUFFIX}"))


def method_settings(cfg: dict, method: str) -> dict:
    """The config sections ``method`` reads (its parameters, its grid, the SSP section for ``+ssp``):
    the method part of a run's settings, so a change of another method's config keeps its runs."""
    spec, use_ssp = parse_method(method)
    sections = [s for s in (spec.config_section, spec.search_section) if s] + (["ssp"] if use_ssp else [])
    return {sec: cfg.get(sec) for sec in dict.fromkeys(sections)}


def run_stub(*, dataset: str, backbone: str, method: str, shots: int, seed: int, common: dict,
             cfg: dict) -> dict:
    """The coordinates and settings of one run: enough to find its file (:func:`find_run`).
    ``common`` holds the settings shared by every method (source, backbone, protocol)."""
    metrics = {**DEFAULT_METRICS, **(cfg.get("metrics") or {})}
    # the reliability settings join the key only when they differ from the defaults, so runs made
    # before reliability metrics existed keep their keys (and report with empty reliability cells)
    settings = clean_floats({**common, "method": method_settings(cfg, method),
                             **({"metrics": metrics} if metrics != DEFAULT_METRICS else {})})
    return {"dataset": dataset, "backbone": {"name": backbone}, "method": method, "shots": int(shots),
            "seed": int(seed), "settings_key": settings_key(settings), "protocol_key": settings_key(common),
            "settings": settings}


def make_record(stub: dict, result: Any, *, backbone: dict, protocol: dict, protocol_summary: str,
                source: dict, text_features: dict, seeds: dict, timings: dict, warnings: list[str],
                cfg: dict, device: Any, extra: dict | None = None) -> dict:
    """The run JSON: coordinates, settings and their key, protocol, provenance, results
    (``result``: a :class:`ssp.run.pipeline.MethodResult`). ``warnings`` is the run's one list of
    warnings (sampling, fitting, search)."""
    from datetime import datetime, timezone

    # the values as stored (float noise removed), so a fresh run prints what a reused one will
    return clean_floats(jsonable({
        "ssp_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: stub[k] for k in ("dataset", "method", "shots", "seed")},
        "backbone": {**backbone, "name": stub["backbone"]["name"]},
        "settings_key": stub["settings_key"],
        "protocol_key": stub["protocol_key"],
        "protocol_summary": protocol_summary,
        "protocol": protocol,
        "source": source,
        "text_features": text_features,
        "seeds": seeds,
        "hyperparameters": result.hyperparameters,
        "val_accuracy": None if result.val_accuracy is None else round(result.val_accuracy, 6),
        "test_accuracy": round(result.test_accuracy, 6),
        **({"reliability": result.reliability} if getattr(result, "reliability", None) is not None else {}),
        "details": result.details,
        "timings": {k: round(float(v), 4) for k, v in {**timings, **result.timings}.items()},
        "warnings": list(warnings),
        "environment": environment(device),
        "settings": stub["settings"],
        "config": cfg,
        **(extra or {}),
    }))


class RunLock:
    """A lock file beside a run's JSON (``<file>.lock``, holding ``host pid``) while one process
    runs it, so that parallel invocations on one output folder share the work instead of
    duplicating it. A lock whose process is gone (same host) is stale and taken over."""

    def __init__(self, output_dir: Path, stub: dict) -> None:
        self.path = Path(output_dir) / (run_filename(stub) + ".lock")
        self.held = False

    def acquire(self) -> bool:
        """Take the lock; False when a live process holds it."""
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            return True
        return False

    def _stale(self) -> bool:
        import socket

        try:
            host, pid = self.path.read_text().split()
            pid_alive = True
            if host == socket.gethostname():
                try:
                    os.kill(int(pid), 0)
                except ProcessLookupError:
                    pid_alive = False
                except PermissionError:
                    pass
            return not pid_alive
        except (OSError, ValueError):
            return True  # unreadable or half-written: its writer died before finishing it

    def locked_by_other(self) -> bool:
        return self.path.exists() and not self.held and not self._stale()

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Raise, before any work, when results cannot be written to ``folder``: ``NotADirectoryError``
    when it (or a parent) is a file, ``PermissionError`` when it (or the parent it would be created
    in) is not writable. Nothing is created."""
    import uuid

    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"output folder {folder}: {existing} is a file, not a folder; choose another "
                                 "--output")
    probe = existing / f".ssp-write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"cannot write to output folder {folder} ({err.strerror or err} in {existing}); "
                              "choose a writable --output") from None
    return folder

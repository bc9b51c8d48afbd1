"""Reliability results of run records: per-sample files, seed-averaged rows, the calibration table.

A run record written by the run stage holds ``reliability`` (see :mod:`ssp.metrics.evaluate`) and
``samples`` (the ``.samples.npz`` beside it: per-sample label / prediction / confidence and
conformal scores, per-class accuracy and the confusion matrix, with its SHA-256). Older records
have neither: they still appear in every table, with empty reliability cells.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ssp.report.stats import mean_std, method_order
from ssp.run.records import RUN_SUFFIX

#: (column, path into a record's ``reliability``, display scale, digits) of the reliability tables:
#: fractions are shown in percent (scale 100)
COLUMNS: tuple[tuple[str, tuple[str, ...], float, int], ...] = (
    ("ECE", ("raw", "ece"), 100.0, 2),
    ("ECE (TS)", ("temperature_scaled", "ece"), 100.0, 2),
    ("MCE", ("raw", "mce"), 100.0, 2),
    ("NLL", ("raw", "nll"), 1.0, 3),
    ("NLL (TS)", ("temperature_scaled", "nll"), 1.0, 3),
    ("Brier", ("raw", "brier"), 1.0, 3),
    ("Brier (TS)", ("temperature_scaled", "brier"), 1.0, 3),
    ("T", ("temperature",), 1.0, 3),
    ("AURC", ("aurc",), 100.0, 2),
    ("acc@80%", ("accuracy_at_coverage", "0.8"), 1.0, 2),
    ("acc@50%", ("accuracy_at_coverage", "0.5"), 1.0, 2),
    ("LAC cov", ("conformal", "lac", "coverage"), 100.0, 2),
    ("LAC size", ("conformal", "lac", "mean_set_size"), 1.0, 2),
    ("APS cov", ("conformal", "aps", "coverage"), 100.0, 2),
    ("APS size", ("conformal", "aps", "mean_set_size"), 1.0, 2),
)


def _sort_key(record: dict) -> tuple:
    return (record["dataset"], record["backbone"]["name"], record["method"], record["shots"], record["seed"])


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"results file {path} is unreadable ({err}); delete it or re-run that run") from err


def load_run_files(paths: Iterable[str | Path]) -> list[tuple[Path, dict]]:
    """``(file, record)`` of every run JSON in ``paths`` (files, or folders searched recursively),
    sorted like :func:`load_runs`; a path that does not exist or is neither is an error naming it."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            found.update(dict.fromkeys(sorted(p.rglob(f"*{RUN_SUFFIX}"))))
        elif p.is_file() and p.name.endswith(RUN_SUFFIX):
            found[p] = None
        elif p.exists():
            raise ValueError(f"{p} is not a run file (*{RUN_SUFFIX}) or a folder of them")
        else:
            raise FileNotFoundError(f"{p} does not exist; pass run folders or *{RUN_SUFFIX} files")
    out = [(path, _read(path)) for path in found]
    out.sort(key=lambda pr: _sort_key(pr[1]))
    return out


def load_samples(run_file: str | Path, record: dict) -> dict[str, np.ndarray] | None:
    """The arrays of the ``.samples.npz`` a record names (None for a record without one); a missing
    file or one whose SHA-256 differs from the record's is an error naming it."""
    info = record.get("samples")
    if not info:
        return None
    path = Path(run_file).with_name(info["file"])
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FileNotFoundError(f"{path} (named by {run_file}) cannot be read ({err.strerror or err}); "
                                "re-run that run") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.get("sha256"):
        raise ValueError(f"{path}: SHA-256 {digest[:12]}... differs from the {info.get('sha256', '')[:12]}... "
                         f"recorded in {run_file}; the file was changed; re-run that run")
    import io

    with np.load(io.BytesIO(data)) as npz:
        return {k: npz[k] for k in npz.files}


def value_at(record: dict, path: tuple[str, ...]) -> float | None:
    """``record['reliability'][path...]`` as a float, or None where a record lacks it."""
    value: Any = record.get("reliability")
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return None if value is None else float(value)


def group_key(record: dict) -> tuple:
    """(dataset, backbone, protocol key, method, shots): the rows of the tables (seeds averaged)."""
    return (record["dataset"], record["backbone"]["name"], str(record.get("protocol_key") or "-"),
            record["method"], int(record["shots"]))


def reliability_rows(records: Iterable[dict]) -> list[dict]:
    """One row per :func:`group_key`: ``accuracy`` and every :data:`COLUMNS` value as
    ``(mean, std)`` over the seeds that have it (std None for one seed; ``(None, None)`` for runs
    made before reliability metrics were recorded)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[group_key(r)].append(r)
    rows = []
    for key, runs in groups.items():
        row = {"dataset": key[0], "backbone": key[1], "protocol_key": key[2], "method": key[3], "shots": key[4],
               "seeds": sorted(int(r["seed"]) for r in runs),
               "accuracy": mean_std([float(r["test_accuracy"]) for r in runs])}
        alphas = {value_at(r, ("conformal", "alpha")) for r in runs} - {None}
        row["alpha"] = alphas.pop() if len(alphas) == 1 else None
        for name, path, _, _ in COLUMNS:
            values = [v for v in (value_at(r, path) for r in runs) if v is not None]
            row[name] = mean_std(values) if values else (None, None)
        rows.append(row)
    order = method_order({r["method"] for r in rows})
    rows.sort(key=lambda r: (r["dataset"], r["backbone"], r["protocol_key"], r["shots"], order.index(r["method"])))
    return rows


def format_value(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (``mean`` alone for one seed, ``-`` when missing), times ``scale``."""
    if mean is None:
        return "-"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def format_calibration_table(records: Iterable[dict]) -> str:
    """A Markdown table per (dataset, backbone, protocol, shots): methods as rows; accuracy,
    calibration raw and temperature-scaled, selective prediction and conformal columns; ``""``
    when no record has reliability metrics (runs made before they were recorded)."""
    records = list(records)
    if not any(r.get("reliability") for r in records):
        return ""
    rows = reliability_rows(records)
    blocks = []
    for key in dict.fromkeys((r["dataset"], r["backbone"], r["protocol_key"], r["shots"]) for r in rows):
        block = [r for r in rows if (r["dataset"], r["backbone"], r["protocol_key"], r["shots"]) == key]
        seeds = sorted({s for r in block for s in r["seeds"]})
        alphas = sorted({r["alpha"] for r in block if r["alpha"] is not None})
        target = f" | conformal target {', '.join(f'{1 - a:.0%}' for a in alphas)}" if alphas else ""
        header = ["method", "acc"] + [name for name, *_ in COLUMNS]
        lines = [f"**{key[0]} | {key[1]} | {key[3]}-shot | settings {key[2]} | seeds {seeds}{target}**",
                 "", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for r in block:
            cells = [r["method"], format_value(*r["accuracy"])]
            cells += [format_value(*r[name], scale, digits) for name, _, scale, digits in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    legend = ("acc: test accuracy (%). ECE / MCE (%, 15 equal-width bins on the top-1 softmax confidence), NLL "
              "(nats), Brier (multi-class, 0..2): raw, and after temperature scaling (TS) with one temperature T "
              "fitted on the validation split. AURC (%): area under the risk-coverage curve; acc@80% / acc@50%: "
              "accuracy of the 80% / 50% most confident test samples. LAC / APS: split conformal sets calibrated "
              "on the validation split, empirical test coverage (%) and mean set size (classes).")
    return "\n\n".join(blocks) + "\n\n" + legend if blocks else ""

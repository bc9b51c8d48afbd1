"""Run records on disk: finding and reading run JSON files, and the seed statistics every table uses."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

RUN_SUFFIX = ".run.json"


def load_runs(output_dir: Path) -> list[dict]:
    """Every run record under ``output_dir`` (recursively), sorted by (dataset, backbone, method, shots, seed)."""
    records = []
    for path in sorted(Path(output_dir).rglob(f"*{RUN_SUFFIX}")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"results file {path} is unreadable ({err}); delete it or re-run that run") from err
    records.sort(key=lambda r: (r["dataset"], r["backbone"]["name"], r["method"], r["shots"], r["seed"]))
    return records


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std; the std of a single seed is undefined (``None``), not 0."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)  # sample std, as papers report
    return mean, math.sqrt(var)


def method_order(methods: Iterable[str]) -> list[str]:
    from ssp.methods.registry import method_names

    order = {m: i for i, m in enumerate(method_names())}
    return sorted(set(methods), key=lambda m: (order.get(m.split(" [")[0], len(order)), m))



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

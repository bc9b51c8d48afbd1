"""The report stage's tables: the run files (written by :mod:`ssp.run.records`) aggregated over
seeds into a text table, ``summary.json`` and a plot.

A *run* is one (dataset, backbone, method, shots, seed) under one set of *settings* (everything
else that changes its numbers: data source, validation policy, views, precision, the method's
config, ...). A run's file is keyed by a short hash of its settings (``settings_key``), so runs of
different settings never overwrite each other, and tables group runs by their protocol
(``protocol_key``: the settings shared by all methods) and never average runs of different
settings. Tables are always rebuilt from the JSON files, so a results folder is the single source
of truth (as in CLIP_benchmark).
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from ssp._io import atomic_path, write_json_atomic, write_text_atomic
from ssp.methods.registry import method_names
from ssp.run.records import RUN_SUFFIX, find_runs, run_filename


def load_runs(output_dir: Path, *, skipped: list[Path] | None = None) -> list[dict]:
    """The run records of the output folder ``output_dir``, sorted by (dataset, backbone, method,
    shots, seed): every ``*.run.json`` at the place :func:`run_filename` gives it. Run files
    elsewhere below it (another output folder nested inside, e.g. ``runs/demo`` under ``runs``)
    are not this folder's runs: they are left out and appended to ``skipped``. One run has one
    place, so two files of one run cannot both be read."""
    output_dir = Path(output_dir)
    records = []
    for path in find_runs(output_dir):
        try:
            record = json.loads(path.read_text())
            own = path.relative_to(output_dir).as_posix() == run_filename(record)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"results file {path} is unreadable ({err}); delete it or re-run that run") from err
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"results file {path} is not a run JSON written by ssp (no dataset, backbone, "
                             "method, shots or seed); move it out of the results folder") from None
        if not own:
            if skipped is not None:
                skipped.append(path)
            continue
        records.append(record)
    records.sort(key=lambda r: (r["dataset"], r["backbone"]["name"], r["method"], r["shots"], r["seed"]))
    return records


def nested_output_folders(output_dir: Path, paths: Iterable[Path]) -> list[Path]:
    """The output folders (below ``output_dir``) that the run files ``paths`` belong to; a file
    at no run's place counts as its own folder."""
    folders = []
    for path in paths:
        try:
            rel = run_filename(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            rel = Path(path).name
        text = Path(path).as_posix()
        folder = Path(text[: -len(rel)]) if text.endswith("/" + rel) else Path(path).parent
        if folder not in folders:
            folders.append(folder)
    return folders


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std; the std of a single seed is undefined (``None``), not 0."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)  # sample std, as papers report
    return mean, math.sqrt(var)


def _protocol_key(record: dict) -> str:
    return str(record.get("protocol_key") or "-")


def summarize(records: Iterable[dict], metric: str = "test_accuracy") -> list[dict]:
    """Mean and sample std of ``metric`` over seeds for each (dataset, backbone, protocol, method,
    shots). Runs of one method under different method settings (e.g. two APE grids) in the same
    protocol are never averaged together: each gets its own row, labelled ``method [settings_key]``."""
    records = list(records)
    keys_of: dict[tuple, set] = defaultdict(set)
    for r in records:
        keys_of[(r["dataset"], r["backbone"]["name"], _protocol_key(r), r["method"])].add(r.get("settings_key"))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        where = (r["dataset"], r["backbone"]["name"], _protocol_key(r), r["method"])
        label = r["method"] if len(keys_of[where]) == 1 else f"{r['method']} [{r.get('settings_key') or '-'}]"
        groups[(r["dataset"], r["backbone"]["name"], _protocol_key(r), label, r["shots"])].append(r)
    rows = []
    for (dataset, backbone, protocol, method, shots), runs in sorted(groups.items()):
        seeds = [r["seed"] for r in runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{dataset} / {backbone} / {method} / {shots}-shot: several runs of seed "
                             f"{sorted(seeds)} with the same settings; remove the duplicates")
        mean, std = mean_std([float(r[metric]) for r in runs])
        rows.append({"dataset": dataset, "backbone": backbone, "protocol_key": protocol,
                     "protocol": runs[0].get("protocol_summary"), "method": method, "shots": shots,
                     "mean": round(mean, 6), "std": None if std is None else round(std, 6),
                     "seeds": sorted(seeds), "metric": metric})
    return rows


def method_order(methods: Iterable[str]) -> list[str]:
    order = {m: i for i, m in enumerate(method_names())}
    return sorted(set(methods), key=lambda m: (order.get(m.split(" [")[0], len(order)), m))


def format_table(summary: list[dict]) -> str:
    """One block per (dataset, backbone): methods as rows, shot counts as columns, ``mean ± std``."""
    blocks = []
    keys = sorted({(r["dataset"], r["backbone"], r.get("protocol_key", "-")) for r in summary})
    several = defaultdict(int)
    for dataset, backbone, _ in keys:
        several[(dataset, backbone)] += 1
    for dataset, backbone, protocol in keys:
        rows = [r for r in summary
                if (r["dataset"], r["backbone"], r.get("protocol_key", "-")) == (dataset, backbone, protocol)]
        shots = sorted({r["shots"] for r in rows})
        seeds = sorted({s for r in rows for s in r["seeds"]})
        cell = {(r["method"], r["shots"]): f"{r['mean']:.2f}" + ("" if r["std"] is None else f" ± {r['std']:.2f}")
                for r in rows}
        header = ["method"] + [f"{k}-shot" for k in shots]
        body = [[m] + [cell.get((m, k), "-") for k in shots] for m in method_order({r["method"] for r in rows})]
        widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
        fmt = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(row, widths)))
        metric = rows[0]["metric"].replace("_", " ")
        spread = "mean ± std over seeds" if len(seeds) > 1 else "one seed (no std):"
        title = f"{dataset} | {backbone} | {metric} (%), {spread} {seeds}"
        described = rows[0].get("protocol")
        if described or several[(dataset, backbone)] > 1:
            title += f"\n  settings {protocol}: {described or 'not recorded'}"
        lines = [title, fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot_summary(summary: list[dict], path: Path) -> Path:
    """Accuracy against shots, one line per method (error bars = std), one panel per dataset/backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["dataset"], r["backbone"], r.get("protocol_key", "-")) for r in summary})
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, (dataset, backbone, protocol) in zip(axes[0], keys):
        rows = [r for r in summary
                if (r["dataset"], r["backbone"], r.get("protocol_key", "-")) == (dataset, backbone, protocol)]
        for method in method_order({r["method"] for r in rows}):
            pts = sorted((r["shots"], r["mean"], r["std"] or 0.0) for r in rows if r["method"] == method)
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method,
                        linestyle="--" if method.startswith("zero-shot") else "-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["shots"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("shots per class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset} ({backbone})" + ("" if protocol == "-" else f" [{protocol}]"), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def protocol_name(record: dict) -> str:
    """The protocol a run was made under (records of the default few-shot protocol name none)."""
    return str(record.get("protocol_name") or "fewshot")


def format_metrics_table(records: list[dict]) -> str:
    """Runs of a protocol with several results per run (``table_metrics``: base / new / harmonic
    mean, ...): one block per (dataset, backbone, settings, shots), methods as rows, the metrics
    as columns, ``mean ± std`` over seeds."""
    metrics = list(records[0].get("table_metrics") or ["test_accuracy"])
    per_metric = {m: summarize(records, m) for m in metrics}
    blocks = []
    keys = sorted({(r["dataset"], r["backbone"], r["protocol_key"], r["shots"]) for r in per_metric[metrics[0]]})
    for dataset, backbone, protocol, shots in keys:
        cell, seeds, described = {}, set(), None
        for m in metrics:
            for r in per_metric[m]:
                if (r["dataset"], r["backbone"], r["protocol_key"], r["shots"]) == (dataset, backbone, protocol, shots):
                    cell[(r["method"], m)] = f"{r['mean']:.2f}" + ("" if r["std"] is None else f" ± {r['std']:.2f}")
                    seeds.update(r["seeds"])
                    described = r.get("protocol")
        header = ["method"] + [m.replace("_accuracy", "").replace("_", " ") for m in metrics]
        body = [[meth] + [cell.get((meth, m), "-") for m in metrics]
                for meth in method_order({meth for meth, _ in cell})]
        widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
        fmt = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(row, widths)))
        spread = "mean ± std over seeds" if len(seeds) > 1 else "one seed (no std):"
        title = (f"{dataset} | {backbone} | {protocol_name(records[0])}, {shots}-shot | accuracy (%), {spread} "
                 f"{sorted(seeds)}\n  settings {protocol}: {described or 'not recorded'}")
        blocks.append("\n".join([title, fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]))
    return "\n\n".join(blocks)


def write_report(output_dir: Path) -> tuple[str, dict[str, Path]]:
    """Aggregate every run under ``output_dir``; write ``summary.json``, ``results.md``, ``results.png``.
    Few-shot runs get the shots x methods table and plot; runs of other protocols (base-to-new, ...)
    a table of their own metrics per protocol."""
    output_dir = Path(output_dir)
    skipped: list[Path] = []
    records = load_runs(output_dir, skipped=skipped)
    nested = nested_output_folders(output_dir, skipped)
    if not records:
        elsewhere = (f" (only in other output folders inside it: {', '.join(map(str, nested))}; point "
                     "--output at one of them)" if nested else "")
        raise FileNotFoundError(f"no run results (*{RUN_SUFFIX}) in the output folder {output_dir}{elsewhere}")
    if nested:
        logging.getLogger(__name__).info(
            "report of %s: %d run file(s) of other output folders inside it not read (%s)", output_dir,
            len(skipped), ", ".join(map(str, nested)))
    by_protocol: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_protocol[protocol_name(r)].append(r)
    fewshot = by_protocol.pop("fewshot", [])
    tables, summaries, paths = [], {}, {}
    if fewshot:
        summary = summarize(fewshot)
        val_summary = summarize(fewshot, "val_accuracy")
        tables.append(format_table(summary))
        summaries.update(test=summary, val=val_summary)
        paths["plot"] = plot_summary(summary, output_dir / "results.png")
    for name, runs in sorted(by_protocol.items()):
        tables.append(format_metrics_table(runs))
        summaries[name] = {m: summarize(runs, m) for m in runs[0].get("table_metrics") or ["test_accuracy"]}
    table = "\n\n".join(tables)
    paths["summary"] = write_json_atomic(output_dir / "summary.json", summaries)
    paths["table"] = output_dir / "results.md"
    text = f"```\n{table}\n```\n"
    if fewshot:
        text += f"\nValidation accuracy of the chosen hyper-parameters:\n\n```\n{format_table(summaries['val'])}\n```\n"
    write_text_atomic(paths["table"], text)
    return table, paths

"""Results: one JSON per run, aggregation over seeds, a text table and a plot.

A *run* is one (dataset, backbone, method, shots, seed) under one set of *settings* (everything
else that changes its numbers: data source, validation policy, views, precision, the method's
config, ...). A run's file is keyed by a short hash of its settings (``settings_key``), so runs of
different settings never overwrite each other, and tables group runs by their protocol
(``protocol_key``: the settings shared by all methods) and never average runs of different
settings. Tables are always rebuilt from the JSON files, so a results folder is the single source
of truth (as in CLIP_benchmark).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

from ssp._io import atomic_path, write_json_atomic, write_text_atomic
from ssp.report.runs import RUN_SUFFIX, load_run_files, load_runs, mean_std, method_order

__all__ = ["RUN_SUFFIX", "load_runs", "summarize", "format_table", "plot_summary", "write_report"]


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


def write_report(output_dir: Path, *, page: bool = True) -> tuple[str, dict[str, Path]]:
    """Aggregate every run under ``output_dir``; write ``summary.json``, ``results.md``,
    ``results.png``, ``calibration.md`` (runs with reliability metrics) and, with ``page``, the
    results page ``index.html`` (:mod:`ssp.report.html`, plots in ``plots/``)."""
    from ssp.report.html import write_results_page
    from ssp.report.reliability import format_calibration_table

    output_dir = Path(output_dir)
    runs = load_run_files([output_dir]) if Path(output_dir).is_dir() else []
    records = [r for _, r in runs]
    if not records:
        raise FileNotFoundError(f"no run results (*{RUN_SUFFIX}) under {output_dir}")
    summary = summarize(records)
    val_summary = summarize(records, "val_accuracy")
    table = format_table(summary)
    val_table = format_table(val_summary)
    paths = {
        "summary": write_json_atomic(output_dir / "summary.json", {"test": summary, "val": val_summary}),
        "table": output_dir / "results.md",
        "plot": plot_summary(summary, output_dir / "results.png"),
    }
    write_text_atomic(paths["table"], f"```\n{table}\n```\n\nValidation accuracy of the chosen "
                                       f"hyper-parameters:\n\n```\n{val_table}\n```\n")
    calibration = format_calibration_table(records)
    if calibration:
        paths["calibration"] = write_text_atomic(output_dir / "calibration.md", calibration + "\n")
    if page:
        paths["page"] = write_results_page(runs, output_dir)
    return table, paths

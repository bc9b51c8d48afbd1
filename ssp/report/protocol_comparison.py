"""Base-to-new and distribution-shift runs beside the published numbers (``ssp-reproduce --paper
gda --track base2new|shift``): a Markdown table, a JSON file and a plot.

Per (backbone, method, dataset, shots, metric): our mean ± sample std over seeds and the published
mean ± std over its seeds (:func:`ssp.report.published.published_protocol_summary`), and the
difference. The harmonic mean of a base-to-new cell is that of the seed means (as CoCoOp and GDA
report it); the 11-dataset :data:`~ssp.report.published.AVERAGE` row appears when all 11 are run.
"""
from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev
from typing import Iterable

from ssp._io import atomic_path, write_text_atomic
from ssp.report.published import (
    AVERAGE,
    BENCHMARK_DATASETS,
    PROTOCOL_SOURCES,
    SOURCE_TITLES,
    canonical_backbone,
    published_protocol_summary,
)
from ssp.report.tables import method_order

__all__ = ["compare_protocol", "format_protocol_markdown", "write_protocol_comparison"]


def _ours(records: list[dict], metrics: list[str], base2new: bool) -> dict[tuple, dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        key = (canonical_backbone(r["backbone"].get("model") or r["backbone"]["name"]), r["method"], r["dataset"],
               r["shots"])
        cells.setdefault(key, []).append(r)
    out: dict[tuple, dict] = {}
    for (bb, method, dataset, shots), runs in cells.items():
        for metric in metrics:
            values = [float(r[metric]) for r in runs if metric in r]
            if values:
                out[(bb, method, dataset, shots, metric)] = {"mean": mean(values),
                                                             "std": stdev(values) if len(values) > 1 else None,
                                                             "seeds": sorted(r["seed"] for r in runs)}
        if base2new and (bb, method, dataset, shots, "base_accuracy") in out:
            b, n = out[(bb, method, dataset, shots, "base_accuracy")], out[(bb, method, dataset, shots, "new_accuracy")]
            out[(bb, method, dataset, shots, "harmonic_mean")] = {
                "mean": 0.0 if b["mean"] + n["mean"] == 0 else 2 * b["mean"] * n["mean"] / (b["mean"] + n["mean"]),
                "std": None, "seeds": b["seeds"]}
    if base2new:
        groups = {(bb, m, k) for bb, m, _, k, _ in out}
        for bb, m, k in groups:
            if all((bb, m, d, k, "base_accuracy") in out for d in BENCHMARK_DATASETS):
                avg = {metric: mean(out[(bb, m, d, k, metric)]["mean"] for d in BENCHMARK_DATASETS)
                       for metric in ("base_accuracy", "new_accuracy")}
                avg["harmonic_mean"] = 2 * avg["base_accuracy"] * avg["new_accuracy"] / sum(avg.values())
                for metric, v in avg.items():
                    out[(bb, m, AVERAGE, k, metric)] = {"mean": v, "std": None, "seeds": None}
    return out


def compare_protocol(records: Iterable[dict], source: str) -> list[dict]:
    """Rows ``{backbone, method, dataset, shots, metric, ours_mean, ours_std, seeds, published_mean,
    published_std, difference}`` for every cell we ran (``published_*`` None where unpublished)."""
    protocol = PROTOCOL_SOURCES[source][0]
    records = list(records)
    metrics = (["base_accuracy", "new_accuracy"] if protocol == "base2new"
               else list(dict.fromkeys(m for r in records for m in (r.get("table_metrics") or ["test_accuracy"]))))
    ours = _ours(records, metrics, protocol == "base2new")
    published = {(p["backbone"], p["method"], p["dataset"], p["shots"], p["metric"]): p
                 for p in published_protocol_summary(source)}
    order = {m: i for i, m in enumerate(method_order({k[1] for k in ours}))}
    metric_order = {m: i for i, m in enumerate([*metrics, "harmonic_mean"])}
    rows = []
    for key in sorted(ours, key=lambda k: (k[0], order[k[1]], k[2] != AVERAGE, k[2], k[3], metric_order[k[4]])):
        o, p = ours[key], published.get(key)
        rows.append({"backbone": key[0], "method": key[1], "dataset": key[2], "shots": key[3], "metric": key[4],
                     "ours_mean": o["mean"], "ours_std": o["std"], "seeds": o["seeds"],
                     "published_mean": None if p is None else p["mean"],
                     "published_std": None if p is None else p["std"],
                     "difference": None if p is None else o["mean"] - p["mean"]})
    return rows


def _cell(value: float | None, std: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + ("" if std is None else f" ± {std:.2f}")


def format_protocol_markdown(rows: list[dict], source: str) -> str:
    """One Markdown table: a row per (backbone, method, dataset, shots), ours / published per metric."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((r["backbone"], r["method"], r["dataset"], r["shots"]), {})[r["metric"]] = r
    header = "| backbone | method | dataset | shots | " + " | ".join(
        f"{m.replace('_accuracy', '').replace('_', ' ')} (ours / published)" for m in metrics) + " |"
    lines = [f"Published: {SOURCE_TITLES.get(source, source)} ({PROTOCOL_SOURCES[source][0]}); ours: mean ± std "
             "over seeds; - = not published", "", header, "|" + "---|" * (4 + len(metrics))]
    for (bb, method, dataset, shots), by_metric in cells.items():
        parts = []
        for m in metrics:
            r = by_metric.get(m)
            parts.append("-" if r is None else f"{_cell(r['ours_mean'], r['ours_std'])} / "
                                               f"{_cell(r['published_mean'], r['published_std'])}")
        lines.append(f"| {bb} | {method} | {dataset} | {shots} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def plot_protocol(rows: list[dict], path: Path, title: str) -> Path:
    """Bars per (dataset, metric): ours (one bar per method) and the published value (a black tick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    methods = method_order({r["method"] for r in rows})
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5, 1.2 * len(datasets)) * len(metrics) / 2 + 3, 4),
                             squeeze=False)
    width = 0.8 / max(len(methods), 1)
    for ax, metric in zip(axes[0], metrics):
        for i, method in enumerate(methods):
            xs, ys, pubs = [], [], []
            for j, d in enumerate(datasets):
                r = next((r for r in rows if (r["method"], r["dataset"], r["metric"]) == (method, d, metric)), None)
                if r is not None:
                    xs.append(j + (i - (len(methods) - 1) / 2) * width)
                    ys.append(r["ours_mean"])
                    pubs.append(r["published_mean"])
            ax.bar(xs, ys, width=width, label=method)
            pts = [(x, p) for x, p in zip(xs, pubs) if p is not None]
            if pts:
                ax.scatter(*zip(*pts), marker="_", s=200, color="black",
                           label="published" if i == 0 else None, zorder=3)
        ax.set_xticks(range(len(datasets)))
        ax.set_xticklabels(datasets, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric.replace("_accuracy", "").replace("_", " "), fontsize=9)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def write_protocol_comparison(records: Iterable[dict], output_dir: str | Path, source: str,
                              basename: str | None = None) -> dict[str, Path]:
    """``<basename>.md``, ``.json`` and ``.png`` under ``output_dir`` (default basename
    ``comparison-<protocol>``)."""
    output_dir = Path(output_dir)
    protocol = PROTOCOL_SOURCES[source][0]
    basename = basename or f"comparison-{protocol}"
    rows = compare_protocol(records, source)
    if not rows:
        raise ValueError(f"no {protocol} runs to compare with {source}")
    md = output_dir / f"{basename}.md"
    write_text_atomic(md, format_protocol_markdown(rows, source))
    js = output_dir / f"{basename}.json"
    write_text_atomic(js, json.dumps({"source": source, "protocol": protocol, "rows": rows}, indent=1))
    png = plot_protocol(rows, output_dir / f"{basename}.png", f"{protocol}: ours (bars) vs {SOURCE_TITLES[source]}")
    return {"markdown": md, "json": js, "plot": png}

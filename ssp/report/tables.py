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
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from ssp._io import atomic_path, write_json_atomic, write_text_atomic
from ssp.methods.registry import SSP_SUFFIX, registered_methods
from ssp.report.published import canonical_backbone, published_lookup, published_table
from ssp.report.stats import mean_std, method_order
from ssp.run.records import RUN_SUFFIX, find_runs, run_filename
from ssp.report.html import write_results_page
from ssp.report.reliability import format_calibration_table


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
                     "random_weights": is_random_backbone(runs),
                     "protocol": runs[0].get("protocol_summary"), "method": method, "shots": shots,
                     "mean": round(mean, 6), "std": None if std is None else round(std, 6),
                     "seeds": sorted(seeds), "metric": metric})
    return rows


def is_random_backbone(records: Iterable[dict]) -> bool:
    """True when any record's backbone is randomly initialised (``--pretrained none``)."""
    for r in records:
        backbone = r.get("backbone", {})
        weights = (backbone.get("identity") or {}).get("weights") or {}
        if weights.get("source") == "random" or str(backbone.get("name", "")).endswith("@none"):
            return True
    return False


RANDOM_WEIGHTS_LINE = "RANDOM WEIGHTS (--pretrained none): the accuracies are meaningless"


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
        if rows[0].get("random_weights") or backbone.endswith("@none"):
            title += f"\n  {RANDOM_WEIGHTS_LINE}"
        lines = [title, fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def method_styles(methods: Iterable[str]) -> dict[str, dict]:
    """Method -> matplotlib line style: each base method its own (colour, marker) pair (10 colours
    x 10 markers, so no two of up to 100 base methods share both), its ``+ssp`` variant the same
    colour and marker, dashed, with an open marker. Base methods are taken in registry order, so a
    method keeps its style from one plot to the next."""
    import matplotlib


    palette = matplotlib.colormaps["tab10"].colors
    bases = [s.name for s in registered_methods()]
    extra = sorted({m.split(" [")[0].removesuffix(SSP_SUFFIX) for m in methods} - set(bases))
    index = {b: i for i, b in enumerate(bases + extra)}
    styles = {}
    for m in methods:
        name = m.split(" [")[0]
        base = name.removesuffix(SSP_SUFFIX)
        i = index[base]
        ssp = name.endswith(SSP_SUFFIX)
        colour = palette[i % len(palette)]
        styles[m] = {"color": colour, "marker": _MARKERS[(i + i // len(palette)) % len(_MARKERS)],
                     "linestyle": "--" if ssp else "-", "markerfacecolor": "white" if ssp else colour}
    return styles


def plot_summary(summary: list[dict], path: Path, *, random_weights: bool = False) -> Path:
    """Accuracy against shots, one line per method (error bars = std), one panel per
    dataset/backbone, one legend beside the panels (never over the data); ``random_weights``
    stamps the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["dataset"], r["backbone"], r.get("protocol_key", "-")) for r in summary})
    methods = method_order({r["method"] for r in summary})
    styles = method_styles(methods)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys) + 2.2, 4.2), squeeze=False)
    for ax, (dataset, backbone, protocol) in zip(axes[0], keys):
        rows = [r for r in summary
                if (r["dataset"], r["backbone"], r.get("protocol_key", "-")) == (dataset, backbone, protocol)]
        for method in method_order({r["method"] for r in rows}):
            pts = sorted((r["shots"], r["mean"], r["std"] or 0.0) for r in rows if r["method"] == method)
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, capsize=3, label=method, ms=5, lw=1.5, **styles[method])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["shots"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.minorticks_off()
        ax.set_xlabel("shots per class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset} ({backbone})" + ("" if protocol == "-" else f" [{protocol}]"), fontsize=9)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    ordered = [m for m in methods if m in handles]
    fig.legend([handles[m] for m in ordered], ordered, loc="upper left", bbox_to_anchor=(1.0, 0.98),
               fontsize=8, frameon=False, ncol=1 if len(ordered) <= 18 else 2)
    if random_weights:
        fig.text(0.5, 0.5, "RANDOM WEIGHTS: accuracies meaningless", ha="center", va="center", rotation=20,
                 fontsize=18, color="red", alpha=0.4, fontweight="bold")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
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
        if any(r.get("compare_published") for r in records if r["dataset"] == dataset):
            published = [_published_cell(meth, dataset, shots, backbone) for meth, *_ in body]
            if any(p != "-" for p in published):
                header.append("published")
                body = [row + [p] for row, p in zip(body, published)]
        widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
        fmt = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(row, widths)))
        spread = "mean ± std over seeds" if len(seeds) > 1 else "one seed (no std):"
        kind = "distribution shift" if records[0].get("eval_on") else protocol_name(records[0])
        title = (f"{dataset} | {backbone} | {kind}, {shots}-shot | accuracy (%), {spread} "
                 f"{sorted(seeds)}\n  settings {protocol}: {described or 'not recorded'}")
        blocks.append("\n".join([title, fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]))
    return "\n\n".join(blocks)


def _published_cell(method: str, dataset: str, shots: int, backbone: str) -> str:
    """The published accuracy of ``method`` on ``dataset`` at ``shots``: the run's backbone when a
    source has it, else the first source's backbone, named (``57.78 (RN50, tda_readme)``)."""
    name = method.split(" [")[0]
    rec = published_lookup(name, dataset, shots, backbone=backbone.split("@", 1)[0])
    if rec is None:
        rows = [r for r in published_table(method=name, dataset=dataset) if r["shots"] == shots]
        rec = rows[0] if rows else None
    if rec is None:
        return "-"
    same = rec["backbone"] == canonical_backbone(backbone.split("@", 1)[0])
    return f"{rec['accuracy']:.2f}" + ("" if same else f" ({rec['backbone']}, {rec['source']})")


def plot_metrics(records: list[dict], path: Path) -> Path:
    """Runs of a protocol with several results (base / new / harmonic mean, or source and shift
    targets): one panel per (dataset, backbone, shots), grouped bars (a group per method, a bar
    per metric, error bars = std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(records[0].get("table_metrics") or ["test_accuracy"])
    per_metric = {m: summarize(records, m) for m in metrics}
    keys = sorted({(r["dataset"], r["backbone"], r["shots"]) for r in per_metric[metrics[0]]})
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    width = 0.8 / len(metrics)
    for ax, (dataset, backbone, shots) in zip(axes[0], keys):
        methods = method_order({r["method"] for r in per_metric[metrics[0]]
                                if (r["dataset"], r["backbone"], r["shots"]) == (dataset, backbone, shots)})
        for i, metric in enumerate(metrics):
            cell = {r["method"]: r for r in per_metric[metric]
                    if (r["dataset"], r["backbone"], r["shots"]) == (dataset, backbone, shots)}
            xs = [j + (i - (len(metrics) - 1) / 2) * width for j, m in enumerate(methods) if m in cell]
            ax.bar(xs, [cell[m]["mean"] for m in methods if m in cell], width=width,
                   yerr=[cell[m]["std"] or 0.0 for m in methods if m in cell], capsize=2,
                   label=metric.replace("_accuracy", "").replace("_", " "))
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{dataset} ({backbone}), {shots}-shot", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def write_report(output_dir: Path, *, page: bool = True) -> tuple[str, dict[str, Path]]:
    """Aggregate every run under ``output_dir``; write ``summary.json``, ``results.md``, ``results.png``.
    Few-shot runs get the shots x methods table and plot; runs of other protocols (base-to-new, ...)
    a table of their own metrics per protocol. Runs with reliability metrics add ``calibration.md``
    (:mod:`ssp.report.reliability`); ``page`` writes the results page ``index.html`` with its
    ``plots/`` (:mod:`ssp.report.html`)."""
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
    for r in records:  # few-shot runs with --eval-on targets get a table of their own metrics
        by_protocol[protocol_name(r) if not (protocol_name(r) == "fewshot" and r.get("table_metrics"))
                    else "shift"].append(r)
    fewshot = by_protocol.pop("fewshot", [])
    random_weights = is_random_backbone(records)
    tables, summaries, paths = [], {"random_weights": random_weights}, {}
    if fewshot:
        summary = summarize(fewshot)
        val_summary = summarize(fewshot, "val_accuracy")
        tables.append(format_table(summary))
        summaries.update(test=summary, val=val_summary)
        paths["plot"] = plot_summary(summary, output_dir / "results.png", random_weights=random_weights)
    for name, runs in sorted(by_protocol.items()):
        tables.append(format_metrics_table(runs))
        paths[f"plot_{name}"] = plot_metrics(runs, output_dir / f"results-{name}.png")
        summaries[name] = {m: summarize(runs, m) for m in runs[0].get("table_metrics") or ["test_accuracy"]}
    table = "\n\n".join(tables)
    paths["summary"] = write_json_atomic(output_dir / "summary.json", summaries)
    paths["table"] = output_dir / "results.md"
    text = (f"**{RANDOM_WEIGHTS_LINE}**\n\n" if random_weights else "") + f"```\n{table}\n```\n"
    if fewshot:
        text += f"\nValidation accuracy of the chosen hyper-parameters:\n\n```\n{format_table(summaries['val'])}\n```\n"
    write_text_atomic(paths["table"], text)
    calibration = format_calibration_table(records)
    if calibration:
        paths["calibration"] = write_text_atomic(output_dir / "calibration.md", calibration + "\n")
    if page:
        paths["page"] = write_results_page([(output_dir / run_filename(r), r) for r in records], output_dir)
    return table, paths

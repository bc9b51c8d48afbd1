"""Our runs beside the published numbers: a table (Markdown, CSV, JSON) and a plot.

Built from run records (the per-run JSON of :mod:`ssp.report`: ``dataset``, ``backbone.name``,
``method``, ``shots``, ``seed``, ``test_accuracy``, ...), for any mix of datasets, shots,
seeds, methods and backbones::

    records = load_runs("results/")
    comparison = compare_with_published(records)                    # rows + protocol
    print(format_comparison_markdown(comparison))
    paths = write_comparison(records, "results/")                   # comparison.{md,csv,json,png}

Per (backbone, method, dataset, shots): our mean ± sample std over seeds, the published value
(:mod:`ssp.report.published`) and the difference (ours − published). ``X+ssp`` is put beside the
published ``X`` (the SSP paper's own tables are not available), marked as such. One average row
per (backbone, method, shots): the 11-dataset average when all 11 benchmarks are present
(compared with the published 11-dataset mean), else an average over the datasets present,
labelled with their number (compared with the mean of the published values of those datasets).
Numbers are rounded only where they are shown or stored (4 decimals in CSV / JSON, 2 in Markdown).
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ssp._io import atomic_path, write_text_atomic
from ssp.report.published import (
    AVERAGE,
    BENCHMARK_DATASETS,
    SOURCE_TITLES,
    SOURCES,
    baseline_method,
    canonical_backbone,
    compared_backbone,
    published_backbones,
    published_lookup,
)
from ssp.report.tables import is_random_backbone, mean_std, method_order

__all__ = ["Comparison", "compare_with_published", "format_comparison_markdown", "comparison_csv", "comparison_json",
           "plot_comparison", "write_comparison", "is_random_backbone", "RANDOM_WEIGHTS_STAMP"]

RANDOM_WEIGHTS_STAMP = "RANDOM WEIGHTS — accuracies meaningless"

PUBLISHED_PROTOCOL = ("published: one run per cell; hyper-parameters searched on the test set for "
                      "ImageNet and on the validation split elsewhere, with fixed per-dataset grids")

_CSV_FIELDS = ("backbone", "method", "dataset", "shots", "n_datasets", "seeds", "ours_mean", "ours_std",
               "published", "published_method", "published_source", "difference")


@dataclass
class Comparison:
    """Output of :func:`compare_with_published`.

    Attributes:
        rows: one dict per (backbone, method, dataset, shots), then the average rows; keys
            ``kind`` ("dataset" | "average"), ``backbone``, ``method``, ``dataset`` (the
            dataset name, or "average"), ``label`` (shown name, e.g. "average (11 datasets)"),
            ``n_datasets`` (average rows), ``shots``, ``seeds``, ``ours_mean``, ``ours_std``
            (None for one seed), ``published`` (None if unpublished), ``published_method``
            (``X`` for ``X+ssp``), ``published_source``, ``difference`` (ours − published).
            Unrounded floats.
        protocol: backbone -> what the records say about how they were made (search, seeds,
            text source, ...), plus ``published`` (the published protocol) and ``metric``.
        notes: sentences to show with the table.
    """

    rows: list[dict[str, Any]]
    protocol: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _backbone_model(record: dict) -> str | None:
    """The published backbone a record is compared with (:func:`compared_backbone` of its
    ``model``, else of its ``name`` before ``@``; None for an unlabelled cache)."""
    backbone = record["backbone"]
    return compared_backbone(backbone.get("model") or backbone["name"])


def _first(record: dict, paths: Sequence[tuple[str, ...]]) -> Any:
    for path in paths:
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value not in (None, "", [], {}):
            return value
    return None


def _describe(values: set) -> str:
    if not values:
        return "not recorded"
    return "; ".join(sorted(str(v) for v in values))


def _protocol(records: list[dict]) -> dict[str, Any]:
    """What the records of one backbone say about their protocol."""
    search = {_first(r, [("protocol", "hyperparameters_chosen_on")]) for r in records} - {None}
    text = {_first(r, [("text_source",), ("text_features", "source"), ("protocol", "text_source"),
                       ("provenance", "text_source")]) for r in records} - {None}
    features = {_first(r, [("features_source",), ("protocol", "features_source"),
                           ("features", "folder")]) for r in records} - {None}
    val_policy = {_first(r, [("protocol", "val_policy")]) for r in records} - {None}
    return {
        "backbone": records[0]["backbone"]["name"],
        "random_weights": is_random_backbone(records),
        "search": _describe({str(s) for s in search}),
        "seeds": sorted({int(r["seed"]) for r in records}),
        "text_source": _describe({json.dumps(t, sort_keys=True) if isinstance(t, dict) else str(t) for t in text}),
        "features_source": _describe({str(f) for f in features}) if features else None,
        "val_policy": _describe({str(v) for v in val_policy}),
    }


def compare_with_published(records: Iterable[dict], *, metric: str = "test_accuracy",
                           sources: Sequence[str] | None = None) -> Comparison:
    """Our mean ± std over seeds beside the published value, per dataset and shot, plus averages.

    Args:
        records: run records (see :mod:`ssp.report`); several backbones are kept apart.
        metric: the record key compared ("test_accuracy").
        sources: published sources (keys of :data:`ssp.report.published.SOURCES`) tried in order;
            default all, Tip-Adapter's exp.log first.

    Returns:
        :class:`Comparison`.
    """
    records = list(records)
    if not records:
        raise ValueError("no run records to compare (run the suite first)")
    sources = tuple(SOURCES) if sources is None else tuple(sources)
    by_backbone: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_backbone[r["backbone"]["name"]].append(r)

    rows: list[dict[str, Any]] = []
    protocol: dict[str, Any] = {"metric": metric, "published": PUBLISHED_PROTOCOL, "sources": list(sources),
                                "backbones": {}}
    notes: list[str] = []
    for backbone_name in sorted(by_backbone):
        group = by_backbone[backbone_name]
        protocol["backbones"][backbone_name] = _protocol(group)
        model = _backbone_model(group[0])
        protocol["backbones"][backbone_name]["published_backbone"] = model
        if model is None:
            notes.append(f"{backbone_name}: no published numbers are compared: the published tables are "
                         f"for {', '.join(published_backbones())}, and these runs do not name one of them"
                         + (" (a Tip-Adapter cache: label it with its backbone, e.g. --backbone RN50 "
                            "or ssp-reproduce --backbones RN50, when it holds that backbone's features)"
                            if "cache" in backbone_name else "") + ".")
        # (method, dataset, shots) -> {seed: value}
        cells: dict[tuple[str, str, int], dict[int, float]] = defaultdict(dict)
        for r in group:
            cells[(r["method"], r["dataset"], int(r["shots"]))][int(r["seed"])] = float(r[metric])
        dataset_rows = []
        for (method, dataset, shots), by_seed in cells.items():
            mean, std = mean_std([by_seed[s] for s in sorted(by_seed)])
            reference = baseline_method(method)
            pub = None if model is None else published_lookup(reference, dataset, shots, model, sources)
            dataset_rows.append({
                "kind": "dataset", "backbone": backbone_name, "method": method, "dataset": dataset,
                "label": dataset, "n_datasets": None, "shots": shots, "seeds": sorted(by_seed),
                "ours_mean": mean, "ours_std": std,
                "published": None if pub is None else pub["accuracy"],
                "published_method": reference if pub is not None else None,
                "published_source": None if pub is None else pub["source"],
                "difference": None if pub is None else mean - pub["accuracy"],
            })
        dataset_rows.sort(key=lambda row: (_dataset_key(row["dataset"]), row["shots"]))
        rows.extend(dataset_rows)
        rows.extend(_average_rows(backbone_name, model, cells, sources))
    methods = {r["method"] for r in records}
    if any(m.endswith("+ssp") for m in methods):
        notes.append("X+ssp is compared with the published X (without SSP): the SSP paper's own "
                     "tables are not available to ssp.")
    if any(p["random_weights"] for p in protocol["backbones"].values()):
        notes.append("Random backbone weights: the accuracies are meaningless (smoke test).")
    order = method_order(methods)
    rows.sort(key=lambda row: (row["backbone"], order.index(row["method"]), row["kind"] == "average",
                               _dataset_key(row["dataset"]), row["shots"]))
    return Comparison(rows=rows, protocol=protocol, notes=notes)


def _dataset_key(dataset: str) -> tuple[int, str]:
    """Benchmark order first (as in the papers' tables), other datasets by name."""
    if dataset in BENCHMARK_DATASETS:
        return (BENCHMARK_DATASETS.index(dataset), "")
    return (len(BENCHMARK_DATASETS), dataset)


def _average_rows(backbone_name: str, model: str, cells: dict, sources: Sequence[str]) -> list[dict]:
    """One row per (method, shots): the mean over datasets of the seed means; its std is the
    sample std over seeds of the per-seed averages (when every dataset has the same seeds)."""
    out = []
    keys = sorted({(m, k) for (m, _, k) in cells})
    for method, shots in keys:
        per_dataset = {d: by_seed for (m, d, k), by_seed in cells.items() if m == method and k == shots}
        datasets = sorted(per_dataset, key=_dataset_key)
        means = [mean_std(list(per_dataset[d].values()))[0] for d in datasets]
        mean = sum(means) / len(means)
        seed_sets = {tuple(sorted(per_dataset[d])) for d in datasets}
        std = None
        if len(seed_sets) == 1:
            seeds = list(next(iter(seed_sets)))
            per_seed = [sum(per_dataset[d][s] for d in datasets) / len(datasets) for s in seeds]
            std = mean_std(per_seed)[1]
        else:
            seeds = sorted({s for d in datasets for s in per_dataset[d]})
        reference = baseline_method(method)
        full = set(datasets) == set(BENCHMARK_DATASETS)
        published = source = None
        if model is None:
            pass
        elif full:
            pub = published_lookup(reference, AVERAGE, shots, model, sources)
            if pub is not None:
                published, source = pub["accuracy"], pub["source"]
        else:
            pubs = [published_lookup(reference, d, shots, model, sources) for d in datasets]
            if all(p is not None for p in pubs):
                published = sum(p["accuracy"] for p in pubs) / len(pubs)
                found = sorted({p["source"] for p in pubs}, key=list(SOURCES).index)
                source = "+".join(found)
        label = (f"average ({len(BENCHMARK_DATASETS)} datasets)" if full else
                 f"average of the {len(datasets)} dataset{'s' if len(datasets) > 1 else ''} present")
        out.append({
            "kind": "average", "backbone": backbone_name, "method": method, "dataset": AVERAGE,
            "label": label, "n_datasets": len(datasets), "datasets": datasets, "shots": shots, "seeds": seeds,
            "ours_mean": mean, "ours_std": std, "published": published,
            "published_method": reference if published is not None else None,
            "published_source": source, "difference": None if published is None else mean - published,
        })
    return out


# ----------------------------------------------------------------------------- formatting


def _round(value: Any, digits: int = 4) -> Any:
    return None if value is None else round(float(value), digits)


def _rounded_row(row: dict) -> dict:
    out = dict(row)
    for key in ("ours_mean", "ours_std", "published", "difference"):
        out[key] = _round(row[key])
    return out


def format_comparison_markdown(comparison: Comparison) -> str:
    """Markdown: the protocol, then one table per (backbone, method): datasets (and the average)
    as rows, shots as columns, cells ``ours ± std`` over ``published (difference)``."""
    lines = ["# Ours beside the published numbers", ""]
    proto = comparison.protocol
    metric = proto["metric"].replace("_", " ")
    for backbone, p in proto["backbones"].items():
        lines += [f"**Protocol ({backbone})**", "",
                  f"- ours: hyper-parameters chosen on: {p['search']}; test split scored once; seeds "
                  f"{p['seeds']} (mean ± sample std); backbone {backbone}; text classifier: {p['text_source']}"
                  + (f"; features: {p['features_source']}" if p.get("features_source") else "")
                  + f"; validation policy: {p['val_policy']}",
                  (f"- {proto['published']}; compared: the published {p['published_backbone']} numbers "
                   f"(sources, in order of preference: "
                   f"{', '.join(SOURCE_TITLES.get(s, s) for s in proto['sources'])})"
                   if p.get("published_backbone") else
                   f"- published: none compared (no published numbers for backbone {backbone})"), ""]
        if p["random_weights"]:
            lines += [f"> **{RANDOM_WEIGHTS_STAMP}**", ""]
    for note in comparison.notes:
        lines += [f"> {note}", ""]
    lines += [f"Cells: ours {metric} (%) mean ± std / published (ours − published); "
              "† = published number of the method without SSP; `ours / -` = no published number for "
              "that cell; `-` = not run.", ""]
    blocks: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in comparison.rows:
        blocks[(row["backbone"], row["method"])].append(row)
    for (backbone, method), rows in blocks.items():
        shots = sorted({r["shots"] for r in rows})
        labels = []
        for r in rows:
            if r["label"] not in labels:
                labels.append(r["label"])
        cell = {(r["label"], r["shots"]): r for r in rows}
        lines += [f"## {method} — {backbone}", "",
                  "| dataset | " + " | ".join(f"{k}-shot" for k in shots) + " |",
                  "|---|" + "---|" * len(shots)]
        for label in labels:
            out = []
            for k in shots:
                r = cell.get((label, k))
                out.append("-" if r is None else _format_cell(r))
            name = f"**{label}**" if label.startswith("average") else label
            lines.append(f"| {name} | " + " | ".join(out) + " |")
        lines.append("")
    return "\n".join(lines)


def _format_cell(row: dict) -> str:
    ours = f"{row['ours_mean']:.2f}" + ("" if row["ours_std"] is None else f" ± {row['ours_std']:.2f}")
    if row["published"] is None:
        return f"{ours} / -"
    dagger = "†" if row["published_method"] != row["method"] else ""
    return f"{ours} / {row['published']:.2f}{dagger} ({row['difference']:+.2f})"


def comparison_csv(comparison: Comparison) -> str:
    """Long-format CSV, one line per row of ``comparison`` (floats rounded to 4 decimals)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in comparison.rows:
        r = _rounded_row(row)
        writer.writerow({
            "backbone": r["backbone"], "method": r["method"],
            "dataset": r["dataset"], "shots": r["shots"],
            "n_datasets": "" if r["n_datasets"] is None else r["n_datasets"],
            "seeds": " ".join(str(s) for s in r["seeds"]),
            "ours_mean": r["ours_mean"], "ours_std": "" if r["ours_std"] is None else r["ours_std"],
            "published": "" if r["published"] is None else r["published"],
            "published_method": r["published_method"] or "", "published_source": r["published_source"] or "",
            "difference": "" if r["difference"] is None else r["difference"],
        })
    return buf.getvalue()


def comparison_json(comparison: Comparison) -> dict:
    """JSON-able dict: protocol, notes, rows (floats rounded to 4 decimals)."""
    return {"protocol": comparison.protocol, "notes": comparison.notes,
            "rows": [_rounded_row(r) for r in comparison.rows]}


# ----------------------------------------------------------------------------- plot

# Colour families: a method, its fine-tuned variant and their +ssp versions share one hue.
_FAMILIES = {"zero-shot": "Greys", "tip-adapter": "Blues", "ape": "Oranges"}
_SPARE_FAMILIES = ("Greens", "Purples", "Reds", "YlOrBr", "PuRd")


def _family(method: str) -> str:
    base = baseline_method(method)
    for root in sorted(_FAMILIES, key=len, reverse=True):
        if base == root or base.startswith(root + "-"):
            return root
    return base


def _colours(methods: Sequence[str]) -> dict[str, Any]:
    """Method -> RGBA: one colormap per family, shades spread within it (darkest first)."""
    import matplotlib

    families: dict[str, list[str]] = defaultdict(list)
    for m in methods:
        families[_family(m)].append(m)
    spare = iter(_SPARE_FAMILIES)
    out = {}
    for fam, members in families.items():
        cmap = matplotlib.colormaps[_FAMILIES.get(fam) or next(spare, "viridis")]
        n = len(members)
        for i, m in enumerate(members):
            out[m] = cmap(0.9 - (0.5 * i / max(n - 1, 1)) if n > 1 else 0.8)
    return out


def plot_comparison(comparison: Comparison, path: str | Path, *, backbone: str | None = None,
                    dpi: int = 110) -> Path:
    """Accuracy against shots: one panel per dataset and one for the average, for one backbone.

    Ours: solid line with a ±std band; published: dashed, in the method's colour (``X+ssp``
    shares ``X``'s colour family and is compared with ``X``'s dashed curve). Random weights are
    stamped across the figure. Written atomically as PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    backbones = list(comparison.protocol["backbones"])
    backbone = backbone or backbones[0]
    if backbone not in backbones:
        raise ValueError(f"no runs with backbone {backbone!r}; the records have {backbones}")
    rows = [r for r in comparison.rows if r["backbone"] == backbone]
    methods = method_order({r["method"] for r in rows})
    # published curves: every method's own, and X's for X+ssp runs
    published_methods = method_order({r["published_method"] for r in rows if r["published_method"]})
    colours = _colours(method_order(set(methods) | set(published_methods)))
    panels: list[str] = []
    for r in rows:
        if r["label"] not in panels:
            panels.append(r["label"])
    panels.sort(key=lambda label: (label.startswith("average"), _dataset_key(label)))
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows + 0.8), squeeze=False)
    all_shots = sorted({r["shots"] for r in rows})
    drawn_published = False
    for ax, label in zip(axes.flat, panels):
        sub = [r for r in rows if r["label"] == label]
        for method in methods:
            pts = sorted((r["shots"], r["ours_mean"], r["ours_std"] or 0.0) for r in sub if r["method"] == method)
            if not pts:
                continue
            xs, ys, es = zip(*pts)
            c = colours[method]
            ax.plot(xs, ys, "-", marker="o", ms=4, lw=1.8, color=c)
            ax.fill_between(xs, [y - e for y, e in zip(ys, es)], [y + e for y, e in zip(ys, es)],
                            color=c, alpha=0.2, lw=0)
        for method in published_methods:
            pts = {}
            for r in sub:
                if r["published_method"] == method and r["published"] is not None:
                    pts[r["shots"]] = r["published"]
            if pts:
                xs = sorted(pts)
                ax.plot(xs, [pts[x] for x in xs], "--", marker="x", ms=4, lw=1.4, color=colours[method],
                        gid=f"published:{method}")
                drawn_published = True
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_shots)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.minorticks_off()
        ax.set_title(label, fontsize=10, fontweight="bold" if label.startswith("average") else "normal")
        ax.set_xlabel("shots per class", fontsize=8)
        ax.set_ylabel("top-1 accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [Line2D([], [], color=colours[m], marker="o", lw=1.8, label=m) for m in methods]
    p = comparison.protocol["backbones"][backbone]
    if drawn_published:
        handles += [Line2D([], [], color="0.3", ls="--", marker="x", lw=1.4,
                           label=f"published {p.get('published_backbone')} (dashed)")]
        title = f"{backbone}: ours (solid, ±std over seeds {p['seeds']}) vs published (dashed)"
    else:
        title = (f"{backbone}: ours (±std over seeds {p['seeds']}); no published numbers for this backbone"
                 if not p.get("published_backbone") else
                 f"{backbone}: ours (±std over seeds {p['seeds']}); no published number for these cells")
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    if p["random_weights"]:
        fig.text(0.5, 0.5, RANDOM_WEIGHTS_STAMP, ha="center", va="center", rotation=20,
                 fontsize=max(14, 5 * ncols), color="red", alpha=0.45, fontweight="bold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- files


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_comparison(records: Iterable[dict], output_dir: str | Path, *, metric: str = "test_accuracy",
                     sources: Sequence[str] | None = None, basename: str = "comparison",
                     plot: bool = True) -> dict[str, Any]:
    """Write ``<basename>.md``, ``.csv``, ``.json`` and the plot(s) into ``output_dir`` (atomically).

    One PNG per backbone: ``<basename>.png`` for a single backbone, else
    ``<basename>_<backbone>.png``. Returns ``{"markdown", "csv", "json": Path, "plots": [Path],
    "comparison": Comparison}``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    comparison = compare_with_published(records, metric=metric, sources=sources)
    out: dict[str, Any] = {"comparison": comparison}
    out["markdown"] = write_text_atomic(output_dir / f"{basename}.md", format_comparison_markdown(comparison))
    out["csv"] = write_text_atomic(output_dir / f"{basename}.csv", comparison_csv(comparison))
    out["json"] = write_text_atomic(output_dir / f"{basename}.json",
                                     json.dumps(comparison_json(comparison), indent=2) + "\n")
    out["plots"] = []
    if plot:
        backbones = list(comparison.protocol["backbones"])
        for b in backbones:
            name = f"{basename}.png" if len(backbones) == 1 else f"{basename}_{_safe(b)}.png"
            out["plots"].append(plot_comparison(comparison, output_dir / name, backbone=b))
    return out

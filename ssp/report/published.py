"""Published few-shot numbers, shipped as data, and the paper presets of the suite runner.

One CSV per source in ``ssp/report/published_numbers/`` (package data), long format::

    source,method,dataset,backbone,shots,accuracy
    tip_adapter_exp_log,tip-adapter,stanford_cars,RN50,16,66.77

Each file starts with ``#`` lines giving its provenance (paper, repository, file, commit,
backbone, the protocol behind the numbers). Names are ssp's: datasets as in
:func:`ssp.data.list_datasets`, methods ``zero-shot``, ``tip-adapter``, ``tip-adapter-f``,
``ape``, ``ape-t``, ``gda``, ``timo``, ``timo-s`` (and the baselines the sources list: ``clip-adapter``, ``calip``, ``coop``,
``tip-x``), backbones as open_clip names (``RN50``, ``RN101``, ``ViT-B-32``, ``ViT-B-16``).
Shot-independent methods (zero-shot, CALIP) have ``shots`` = None: one value for every shot count;
the test-time sources (TDA, DMN-ZS: no labelled shots) have ``shots`` = 0.
Dataset :data:`AVERAGE` holds the 11-dataset means.

::

    published_value("ape", "stanford_cars", 16)                    # 70.31 (APE_results.ipynb)
    published_value("zero-shot", "imagenet", 4)                      # 60.32 (exp.log: first source)
    published_table(source="ape_results_notebook", backbone="ViT-B-16")
    PAPER_PRESETS["ape"].methods
"""
from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

__all__ = ["SOURCES", "SOURCE_TITLES", "AVERAGE", "BENCHMARK_DATASETS", "PaperPreset", "PAPER_PRESETS", "published_table",
           "PROTOCOL_SOURCES", "PAPER_TRACKS", "SHIFT_TARGETS", "paper_preset", "published_protocol_summary",
           "published_value", "published_lookup", "source_provenance", "canonical_backbone",
           "baseline_method", "published_backbones", "compared_backbone"]

#: Source id -> file in ``ssp/report/published_numbers/``. Order = default preference when several sources
#: give the same (method, dataset, backbone, shots).
SOURCES: dict[str, str] = {
    "tip_adapter_exp_log": "tip_adapter_exp_log.csv",
    "ape_results_notebook": "ape_results_notebook.csv",
    "gda_exp_log": "gda_exp_log.csv",
    "timo_outputs": "timo_outputs.csv",
    "tda_readme": "tda_readme.csv",
    "dmn_zs_log": "dmn_zs_log.csv",
}

#: Source id -> short human title (for tables).
SOURCE_TITLES: dict[str, str] = {
    "tip_adapter_exp_log": "Tip-Adapter exp.log (RN50)",
    "ape_results_notebook": "APE APE_results.ipynb",
    "gda_exp_log": "GDA exp.log (RN50, mean of 3 seeds)",
    "timo_outputs": "TIMO outputs/TIMO*.txt (RN50, mean of 3 seeds)",
    "tda_readme": "TDA README (RN50, test-time)",
    "dmn_zs_log": "DMN log (ViT-B/16, test-time; memory weight searched on test)",
}

#: Dataset name of the 11-dataset mean rows.
AVERAGE = "average"

#: The 11 CoOp benchmarks the published averages are taken over.
BENCHMARK_DATASETS: tuple[str, ...] = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)

_FIELDS = ("source", "method", "dataset", "backbone", "shots", "accuracy")


@dataclass(frozen=True)
class PaperPreset:
    """What one paper's tables cover: the suite to run and the published numbers to compare with.

    Attributes:
        name: preset name (``--paper NAME``).
        methods: ssp method names to run.
        shots: shot counts of the tables.
        datasets: dataset names of the tables.
        backbone: open_clip name of the tables' backbone.
        sources: published sources compared against, in order of preference.
        note: one line said beside the results (what the comparison is, and is not).
        prompts: the ``--prompts`` choice of the paper's text when run from images (``None``: the
            config's); Tip-Adapter cache folders keep their own text classifier.
    """

    name: str
    methods: tuple[str, ...]
    shots: tuple[int, ...]
    datasets: tuple[str, ...]
    backbone: str
    sources: tuple[str, ...]
    note: str
    prompts: str | None = None
    protocol: str = "fewshot"            # ssp.run.protocols name the runs are made under
    eval_on: tuple[str, ...] = ()        # distribution-shift targets (ssp-fewshot --eval-on)
    seeds: tuple[int, ...] | None = None  # None: the config's


_SHOTS = (1, 2, 4, 8, 16)

#: Registry of ``--paper`` presets. Methods not (yet) runnable by ssp are the runner's to skip.
PAPER_PRESETS: dict[str, PaperPreset] = {p.name: p for p in (
    PaperPreset(
        name="tip-adapter",
        methods=("zero-shot", "tip-adapter", "tip-adapter-f"),
        shots=_SHOTS, datasets=BENCHMARK_DATASETS, backbone="RN50",
        sources=("tip_adapter_exp_log",),
        note="Zhang et al., Tip-Adapter (ECCV 2022), Fig. 4/5 numbers from the repository's exp.log.",
    ),
    PaperPreset(
        name="ape",
        methods=("zero-shot", "tip-adapter", "tip-adapter-f", "ape", "ape-t"),
        shots=_SHOTS, datasets=BENCHMARK_DATASETS, backbone="RN50",
        sources=("ape_results_notebook", "tip_adapter_exp_log"),
        note="Zhu et al., APE (ICCV 2023), numbers from the repository's APE_results.ipynb "
             "(its Tip-Adapter baselines at 16 shots; other shots from Tip-Adapter's exp.log).",
    ),
    PaperPreset(
        name="gda",
        methods=("zero-shot", "tip-adapter", "gda"),
        shots=_SHOTS, datasets=BENCHMARK_DATASETS, backbone="RN50",
        sources=("gda_exp_log",),
        note="Wang et al., GDA (ICLR 2024), Figure 1 numbers from the repository's exp.log (mean of seeds "
             "1-3; its Tip-Adapter rows are Tip-Adapter's exp.log; CLIP's zero-shot row there used the "
             "dataset templates).",
    ),
    PaperPreset(
        name="timo",
        methods=("zero-shot", "gda", "timo", "timo-s"),
        shots=_SHOTS, datasets=BENCHMARK_DATASETS, backbone="RN50",
        sources=("timo_outputs", "gda_exp_log"),
        note="Li et al., TIMO (AAAI 2025), per-seed numbers of the repository's outputs/TIMO.txt and "
             "outputs/TIMO_S.txt (mean of seeds 1-3; text: dataset templates + CuPL sentences, run with "
             "--prompts dataset+cupl); GDA's and zero-shot's rows from GDA's exp.log.",
        prompts="dataset+cupl",
    ),
    PaperPreset(
        name="ssp",
        methods=("zero-shot", "zero-shot+ssp", "tip-adapter", "tip-adapter+ssp", "tip-adapter-f",
                 "tip-adapter-f+ssp", "ape", "ape+ssp", "ape-t", "ape-t+ssp"),
        shots=_SHOTS, datasets=BENCHMARK_DATASETS, backbone="RN50",
        sources=("tip_adapter_exp_log", "ape_results_notebook"),
        note="The SSP paper's own tables (Zhu et al., ACM MM 2024) are not available to ssp: "
             "X+ssp is compared against the published numbers of X (Tip-Adapter exp.log, "
             "APE APE_results.ipynb), i.e. against the method without SSP.",
    ),
)}


def canonical_backbone(name: str) -> str:
    """``"ViT-B/32"``, ``"ViT-B-32@openai"``, ``"RN50-quickgelu"`` -> ``"ViT-B-32"``, ``"RN50"``."""
    base = str(name).split("@", 1)[0].replace("/", "-")
    if base.endswith("-quickgelu"):
        base = base[: -len("-quickgelu")]
    return base


def published_backbones() -> list[str]:
    """The backbones (open_clip names) some shipped source has numbers for."""
    return sorted({row[3] for source in SOURCES for row in _load(source)})


def compared_backbone(model: str | None) -> str | None:
    """The published backbone whose numbers runs of backbone ``model`` are put beside: its
    open_clip name when a shipped source has numbers for it, else None (nothing compared).
    A cache labelled by no one (``cache-D512``) is never compared with another backbone's numbers."""
    if not model:
        return None
    name = canonical_backbone(model)
    return name if name in published_backbones() else None


def baseline_method(method: str) -> str:
    """``"tip-adapter+ssp"`` -> ``"tip-adapter"``: the published method an X+ssp run is put beside."""
    return method[: -len("+ssp")] if method.endswith("+ssp") else method


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown published source {source!r}; choose from {list(SOURCES)}")


def _read_text(source: str) -> str:
    return (resources.files("ssp.report") / "published_numbers" / SOURCES[source]).read_text(encoding="utf-8")


def source_provenance(source: str) -> str:
    """The provenance header of ``source``'s file (its ``#`` lines, without the ``#``)."""
    _check_source(source)
    lines = [line[1:].strip() for line in _read_text(source).splitlines() if line.startswith("#")]
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def _load(source: str) -> tuple[tuple, ...]:
    text = "".join(line for line in io.StringIO(_read_text(source)) if not line.startswith("#"))
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != _FIELDS:
        raise ValueError(f"ssp/report/published_numbers/{SOURCES[source]}: columns {reader.fieldnames}, expected {list(_FIELDS)}")
    rows = []
    for i, row in enumerate(reader, start=2):
        if row["source"] != source:
            raise ValueError(f"ssp/report/published_numbers/{SOURCES[source]} row {i}: source {row['source']!r} != {source!r}")
        shots = int(row["shots"]) if row["shots"] else None
        rows.append((source, row["method"], row["dataset"], row["backbone"], shots, float(row["accuracy"])))
    return tuple(rows)


def published_table(source: str | None = None, *, method: str | None = None, dataset: str | None = None,
                    backbone: str | None = None) -> list[dict]:
    """Published records, optionally filtered.

    Args:
        source: one key of :data:`SOURCES`, or None for all sources (in :data:`SOURCES` order).
        method, dataset: exact ssp names to keep (None: all).
        backbone: keep this backbone (any spelling :func:`canonical_backbone` accepts).

    Returns:
        A list of ``{"source", "method", "dataset", "backbone", "shots", "accuracy"}`` dicts,
        file order; ``shots`` is None for shot-independent methods, ``accuracy`` in percent.
    """
    sources = list(SOURCES) if source is None else [source]
    for s in sources:
        _check_source(s)
    want_backbone = None if backbone is None else canonical_backbone(backbone)
    out = []
    for s in sources:
        for row in _load(s):
            rec = dict(zip(_FIELDS, row))
            if method is not None and rec["method"] != method:
                continue
            if dataset is not None and rec["dataset"] != dataset:
                continue
            if want_backbone is not None and rec["backbone"] != want_backbone:
                continue
            out.append(rec)
    return out


def published_lookup(method: str, dataset: str, shots: int, backbone: str = "RN50",
                     source: str | tuple[str, ...] | list[str] | None = None) -> dict | None:
    """The published record for one cell, or None when no source has it.

    ``source``: one source, a sequence tried in order, or None (every source, :data:`SOURCES`
    order). A shot-independent record (``shots`` None, e.g. zero-shot) answers every shot count.
    """
    sources = list(SOURCES) if source is None else [source] if isinstance(source, str) else list(source)
    for s in sources:
        _check_source(s)
    want = canonical_backbone(backbone)
    for s in sources:
        for row in _load(s):
            _, m, d, b, k, _acc = row
            if m == method and d == dataset and b == want and (k is None or k == int(shots)):
                return dict(zip(_FIELDS, row))
    return None


def published_value(method: str, dataset: str, shots: int, backbone: str = "RN50",
                    source: str | tuple[str, ...] | list[str] | None = None) -> float | None:
    """Published top-1 accuracy (%) of ``method`` on ``dataset`` at ``shots``, or None if unpublished.

    ``dataset`` may be :data:`AVERAGE` for the 11-dataset mean. See :func:`published_lookup`.
    """
    rec = published_lookup(method, dataset, shots, backbone, source)
    return None if rec is None else rec["accuracy"]


# ---------------------------------------------------------------- base-to-new and distribution shift

#: Published per-seed results of the other protocols: source id -> (protocol, file). One row per
#: (method, dataset, backbone, shots, seed, metric): ``metric`` is a run-JSON field
#: (``base_accuracy``, ``new_accuracy``; ``test_accuracy``, ``imagenet_r_accuracy``, ...).
PROTOCOL_SOURCES: dict[str, tuple[str, str]] = {
    "gda_base2new_log": ("base2new", "gda_base2new_log.csv"),
    "gda_robustness_log": ("shift", "gda_robustness_log.csv"),
}
SOURCE_TITLES.update({"gda_base2new_log": "GDA logs/base2new.log (ViT-B/16, 3 seeds)",
                      "gda_robustness_log": "GDA logs/robustness.log (3 seeds)"})
_PROTOCOL_FIELDS = ("source", "method", "dataset", "backbone", "shots", "seed", "metric", "accuracy")

#: ``--paper NAME --track TRACK`` presets of ``ssp-reproduce`` beyond the few-shot tables.
SHIFT_TARGETS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
PAPER_TRACKS: dict[str, dict[str, PaperPreset]] = {
    "gda": {
        "base2new": PaperPreset(
            name="gda", methods=("zero-shot", "gda"), shots=(16,), datasets=BENCHMARK_DATASETS, backbone="ViT-B-16",
            sources=("gda_base2new_log",), protocol="base2new", seeds=(1, 2, 3),
            note="Wang et al., GDA (ICLR 2024), base-to-new table (ViT-B/16, 16 shots, seeds 1-3) from the "
                 "repository's logs/base2new.log; harmonic mean of the seed means, as CoCoOp reports."),
        "shift": PaperPreset(
            name="gda", methods=("zero-shot", "gda"), shots=(16,), datasets=("imagenet",), backbone="ViT-B-16",
            sources=("gda_robustness_log",), protocol="fewshot", eval_on=SHIFT_TARGETS, seeds=(1, 2, 3),
            note="Wang et al., GDA (ICLR 2024), distribution-shift table (16-shot ImageNet -> V2 / Sketch / A / R, "
                 "3 seeds) from the repository's logs/robustness.log."),
    },
}


def paper_preset(paper: str, track: str = "fewshot") -> PaperPreset:
    """The preset of ``paper``'s ``track`` table (``fewshot``: :data:`PAPER_PRESETS`)."""
    if paper not in PAPER_PRESETS:
        raise ValueError(f"--paper {paper!r}: choose from {', '.join(sorted(PAPER_PRESETS))}")
    if track == "fewshot":
        return PAPER_PRESETS[paper]
    tracks = PAPER_TRACKS.get(paper, {})
    if track not in tracks:
        raise ValueError(f"--paper {paper} --track {track}: {paper} publishes "
                         f"{', '.join(['fewshot', *tracks]) if tracks else 'few-shot tables only'}")
    return tracks[track]


@functools.lru_cache(maxsize=None)
def _load_protocol(source: str) -> tuple[tuple, ...]:
    if source not in PROTOCOL_SOURCES:
        raise ValueError(f"unknown published source {source!r}; choose from {list(PROTOCOL_SOURCES)}")
    name = PROTOCOL_SOURCES[source][1]
    text = (resources.files("ssp.report") / "published_numbers" / name).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO("".join(line for line in io.StringIO(text) if not line.startswith("#"))))
    if tuple(reader.fieldnames or ()) != _PROTOCOL_FIELDS:
        raise ValueError(f"ssp/report/published_numbers/{name}: columns {reader.fieldnames}, expected "
                         f"{list(_PROTOCOL_FIELDS)}")
    return tuple((r["source"], r["method"], r["dataset"], r["backbone"], int(r["shots"]), int(r["seed"]),
                  r["metric"], float(r["accuracy"])) for r in reader)


def published_protocol_summary(source: str, *, backbone: str | None = None) -> list[dict]:
    """Mean and sample std over seeds of every (method, dataset, backbone, shots, metric) of a
    protocol source. Base-to-new sources also get ``harmonic_mean`` (of the seed means, as CoCoOp
    reports it) and, when all 11 benchmarks are there, the :data:`AVERAGE` rows (the mean of the
    per-dataset means; its harmonic mean from the average base and new)."""
    from statistics import mean, stdev

    want = None if backbone is None else canonical_backbone(backbone)
    cells: dict[tuple, list[float]] = {}
    for _, method, dataset, bb, shots, _seed, metric, value in _load_protocol(source):
        if want is None or bb == want:
            cells.setdefault((method, dataset, bb, shots, metric), []).append(value)
    rows = [{"source": source, "method": m, "dataset": d, "backbone": b, "shots": k, "metric": metric,
             "mean": mean(v), "std": stdev(v) if len(v) > 1 else None, "n_seeds": len(v)}
            for (m, d, b, k, metric), v in cells.items()]
    if PROTOCOL_SOURCES[source][0] == "base2new":
        by = {(r["method"], r["dataset"], r["backbone"], r["shots"], r["metric"]): r["mean"] for r in rows}
        groups = {(m, b, k) for m, _, b, k, _ in by}
        for m, b, k in sorted(groups):
            datasets = sorted({d for mm, d, bb, kk, _ in by if (mm, bb, kk) == (m, b, k)})
            for d in datasets:
                base, new = by[(m, d, b, k, "base_accuracy")], by[(m, d, b, k, "new_accuracy")]
                rows.append({"source": source, "method": m, "dataset": d, "backbone": b, "shots": k,
                             "metric": "harmonic_mean", "mean": 2 * base * new / (base + new), "std": None,
                             "n_seeds": None})
            if set(BENCHMARK_DATASETS) <= set(datasets):
                avg = {metric: mean(by[(m, d, b, k, metric)] for d in BENCHMARK_DATASETS)
                       for metric in ("base_accuracy", "new_accuracy")}
                avg["harmonic_mean"] = 2 * avg["base_accuracy"] * avg["new_accuracy"] / sum(avg.values())
                rows += [{"source": source, "method": m, "dataset": AVERAGE, "backbone": b, "shots": k,
                          "metric": metric, "mean": v, "std": None, "n_seeds": None} for metric, v in avg.items()]
    return rows

"""The few-shot protocol end to end: dataset -> backbone -> feature cache -> methods -> runs -> report.

Hyper-parameters (Tip-Adapter / APE grids, SSP routing and rank rule) are chosen on the
validation split only; the test split is scored once per run with the chosen values.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from ssp import __version__
from ssp._checks import is_random_weights
from ssp._io import jsonable
from ssp.features.types import Features
from ssp.report.tables import write_report
from ssp.run.records import write_run


@dataclass
class MethodResult:
    method: str
    hyperparameters: dict
    val_accuracy: float
    test_accuracy: float
    timings: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def accuracy(model, features: Features) -> float:
    """Top-1 accuracy in percent."""
    pred = torch.as_tensor(model.predict(features.image_features))
    return float((pred.cpu() == features.labels.cpu()).double().mean() * 100)


def _ssp_details(model) -> dict:
    proj = model.projector_
    ranks = torch.as_tensor(proj.class_ranks_)
    return {"vision_rank": int(proj.vision_rank_), "class_rank_min": int(ranks.min()),
            "class_rank_max": int(ranks.max()), "class_rank_mean": float(ranks.double().mean()),
            "score_precision": getattr(proj, "score_precision_used_", None),
            "score_kernel": getattr(proj, "score_kernel_", None)}


def training_details(model, *, views_given: bool) -> dict:
    """What a fine-tuned estimator learned from: per-epoch history (validation accuracy, training
    loss), the chosen epoch, the training time and the training inputs, from its fitted
    attributes ``history_``, ``best_epoch_``, ``train_time_s_``, ``training_inputs_`` when present."""
    out: dict = {}
    for attr, key in (("history_", "history"), ("best_epoch_", "best_epoch"), ("train_time_s_", "train_time_s"),
                      ("training_inputs_", "training_inputs"), ("seed", "seed")):
        value = getattr(model, attr, None)
        if value is not None:
            out[key] = jsonable(value)
    out.setdefault("training_inputs", "augmented views of the support images" if views_given else
                   "support features (cache keys: the mean of the augmented views); no per-view features given")
    return out


def method_settings(cfg: dict, method: str) -> dict:
    """The config sections ``method`` reads (its parameters, its grid, the SSP section for ``+ssp``):
    the method part of a run's settings, so a change of another method's config keeps its runs."""
    from ssp.methods.registry import parse_method

    spec, use_ssp = parse_method(method)
    sections = [s for s in (spec.config_section, spec.search_section) if s] + (["ssp"] if use_ssp else [])
    return {sec: cfg.get(sec) for sec in dict.fromkeys(sections)}


def run_method(method: str, cfg: dict, support: Features, val: Features, test: Features,
               text_features: torch.Tensor, device=None, seed: int | None = None,
               progress: bool = False) -> MethodResult:
    """Fit ``method`` (a name of :mod:`ssp.registry`, optionally ``+ssp``) on the support set,
    choose its hyper-parameters on ``val``, score ``test`` once.

    ``seed`` seeds the training of fine-tuned methods (the few-shot seed in ``run_fewshot``);
    ``progress`` shows their training progress bar. Warnings raised while fitting and searching
    (e.g. a clamped ``n_channels``, a winner on the grid's edge) are returned in
    ``details["warnings"]``.
    """
    from ssp.methods.projector import SSPProjector
    from ssp.methods.registry import parse_method
    from ssp.methods.search import validation_search

    spec, use_ssp = parse_method(method)
    n_features = support.image_features.shape[1]
    timings: dict[str, float] = {}
    candidates = []  # (val score, model, params, details)
    rank_rules = cfg["ssp"]["rank"] if use_ssp else [None]
    fit_kw: dict = {"patch_features": support.patch_features if use_ssp else None}
    extra: dict = {}
    if spec.uses_views:
        fit_kw["view_features"] = support.view_features
    if spec.fine_tuned:
        fit_kw.update(val_features=val.image_features, val_labels=val.labels,
                      view_features=support.view_features)
        extra["progress"] = progress
        if seed is not None:
            extra["seed"] = seed
    for rank in rank_rules:
        projector = None
        if use_ssp:
            s = cfg["ssp"]
            projector = SSPProjector(patch_top_k=s["patch_top_k"], class_top_k=s["class_top_k"],
                                     global_weight=s["global_weight"], rank=rank,
                                     score_precision=s.get("score_precision", "auto"), device=device)
        model = spec.build(cfg, n_features=n_features, projector=projector, device=device, **extra)
        # The zero-shot term of "vision"/"reference" routing is plain CLIP, so zero-shot+ssp is "paper" only.
        routings = (cfg["ssp"]["routing"] if spec.search_axes else ["paper"]) if use_ssp else None
        grid = spec.grid(cfg)
        if grid is not None and routings:
            grid["routing"] = list(routings)
        details: dict = {}
        # warnings of fit and search (a clamped n_channels, a winner on the grid's edge) go into the record
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            model.fit(support.image_features, support.labels, text_features=text_features, **fit_kw)
            timings["fit_s"] = timings.get("fit_s", 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
            if grid is None:
                score, params = accuracy(model, val), ({"routing": "paper"} if use_ssp else {})
                if use_ssp:
                    model.set_params(routing="paper")
            else:
                result = validation_search(model, val.image_features, val.labels, grid=grid)
                score, params = float(result.best_score_), dict(result.best_params_)
            timings["search_s"] = timings.get("search_s", 0.0) + time.perf_counter() - t0
        if use_ssp:
            params["rank"] = rank
            details = _ssp_details(model)
        if hasattr(model, "channels_"):
            details["n_channels"] = len(model.channels_)
        if spec.fine_tuned or spec.uses_views:
            details["training"] = training_details(model, views_given=fit_kw.get("view_features") is not None)
        fit_warnings = list(dict.fromkeys(str(w.message) for w in caught))
        if fit_warnings:
            details["warnings"] = fit_warnings
        candidates.append((score, model, params, details))
    # first maximum over rank rules wins (ties -> earlier candidate in the config's list)
    best = max(range(len(candidates)), key=lambda i: (candidates[i][0], -i))
    score, model, params, details = candidates[best]
    if use_ssp and len(candidates) > 1:
        details["val_accuracy_per_rank_rule"] = {str(c[2]["rank"]): c[0] for c in candidates}
    t0 = time.perf_counter()
    test_acc = accuracy(model, test)
    timings["test_s"] = time.perf_counter() - t0
    return MethodResult(method, params, score, test_acc, timings, details)


def _index_by_path(samples, kept: torch.Tensor | None = None) -> dict[str, int]:
    """Sample path -> row of the features (``kept``: the rows' sample indices when images were skipped)."""
    rows = range(len(samples)) if kept is None else kept.tolist()
    return {samples[i].path: row for row, i in enumerate(rows)}


def _skipped(samples, features: "Features") -> list[str]:
    """Paths of ``samples`` that have no row in ``features`` (unreadable images left out)."""
    if features.kept is None or len(features.kept) == len(samples):
        return []
    kept = set(features.kept.tolist())
    return [s.path for i, s in enumerate(samples) if i not in kept]


def _extract_all(cfg: dict, dataset, backbone, store, needs_local: bool, recompute: bool, extract_kw: dict) -> None:
    """Every feature file a run needs, extracted by all ranks together (torchrun): the same
    cached_features calls as :func:`run_fewshot` makes, without keeping the results."""
    from ssp.data import make_fewshot_splits
    from ssp.features.store import cached_features

    kw = dict(extract_kw, recompute=recompute)
    cached_features(store, backbone, dataset.test, dataset=dataset.name, split="test", desc="test", **kw)
    if dataset.val is not None:
        cached_features(store, backbone, dataset.val, dataset=dataset.name, split="val", desc="val", **kw)
    for shots in cfg["shots"]:
        for seed in cfg["seeds"]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # rank 0 reports them in the run itself
                splits = make_fewshot_splits(dataset, shots, seed, val_policy=cfg["val_policy"])
            cached_features(store, backbone, splits.support, dataset=dataset.name, split="train", views=cfg["views"],
                            with_patches=needs_local, seed=seed, desc=f"support {shots}-shot seed {seed}", **kw)
            if dataset.val is None:
                cached_features(store, backbone, splits.val, dataset=dataset.name, split="train-as-val",
                                desc=f"val {shots}-shot seed {seed}", **kw)


def run_stub(*, dataset: str, backbone: str, method: str, shots: int, seed: int, common: dict,
             cfg: dict) -> dict:
    """The coordinates and settings of one run: enough to find its file (:func:`ssp.run.records.find_run`).
    ``common`` holds the settings shared by every method (source, backbone, protocol)."""
    from ssp._io import clean_floats
    from ssp.run.records import settings_key

    settings = clean_floats({**common, "method": method_settings(cfg, method)})
    return {"dataset": dataset, "backbone": {"name": backbone}, "method": method, "shots": int(shots),
            "seed": int(seed), "settings_key": settings_key(settings), "protocol_key": settings_key(common),
            "settings": settings}


def make_record(stub: dict, res: MethodResult, *, backbone: dict, protocol: dict, protocol_summary: str,
                source: dict, text_features: dict, seeds: dict, timings: dict, warnings_: list[str],
                cfg: dict, device) -> dict:
    """The run JSON: coordinates, settings and their key, protocol, provenance, results."""
    from ssp.run.records import environment

    return {
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
        "hyperparameters": res.hyperparameters,
        "val_accuracy": round(res.val_accuracy, 6),
        "test_accuracy": round(res.test_accuracy, 6),
        "details": res.details,
        "timings": {k: round(float(v), 4) for k, v in {**timings, **res.timings}.items()},
        "warnings": warnings_,
        "environment": environment(device),
        "settings": stub["settings"],
        "config": cfg,
    }


def fmt_params(params: dict) -> str:
    """Hyper-parameters for display: ``beta=2.86 alpha=1.2 routing=paper``."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "-"


def echo_result(echo: Callable[[str], None], record: dict, *, reused: bool = False) -> None:
    for msg in record.get("details", {}).get("warnings", []):
        if not reused:
            echo(f"[ssp] warning ({record['method']}): {msg}")
    echo(f"[ssp] {record['dataset']} {record['shots']}-shot seed {record['seed']} {record['method']:<16} "
         f"val {record['val_accuracy']:6.2f}  test {record['test_accuracy']:6.2f}  "
         f"{fmt_params(record.get('hyperparameters', {}))}" + ("  (done before: reused)" if reused else ""))


def images_common_settings(cfg: dict, dataset) -> dict:
    """Settings shared by every method of an images run (keyed into each run's settings)."""
    from ssp.run.records import sample_list_digest

    lists = {name: (None if samples is None else sample_list_digest(samples, dataset.root))
             for name, samples in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test))}
    return {"source": {"kind": "images", "image_lists": lists, "templates": list(dataset.templates)},
            "backbone": {"model": cfg["backbone"], "pretrained": str(cfg["pretrained"]),
                         "precision": cfg["precision"], "quick_gelu": cfg.get("quick_gelu")},
            "protocol": {"val_policy": cfg["val_policy"], "views": cfg["views"]}}


def run_fewshot(cfg: dict, *, root: str | Path, output_dir: str | Path, cache_dir: str | Path | None = None,
                device: str | None = None, recompute: bool = False, split_file: str | Path | None = None,
                progress: bool = True, echo: Callable[[str], None] = print,
                skip_existing: bool = False, write_table: bool = True) -> tuple[list[dict], str]:
    """Run every (shots, seed, method) of ``cfg``; write one JSON per run and the report.

    ``skip_existing``: a run whose JSON exists under ``output_dir`` with the same settings is
    reused, not recomputed (and nothing is extracted for a (shots, seed) whose runs all exist).
    ``cfg["skip_bad_images"]``: leave unreadable images out (listed in each run's
    ``skipped_images``) instead of stopping with an error. Under torchrun (an initialised
    process group, see :mod:`ssp.distributed`) every rank extracts its share of the features
    first; then rank 0 alone runs the methods and writes, the other ranks return ``([], "")``.

    Returns ``(records, table)`` (``table`` is ``""`` when ``write_table`` is False).
    """
    from ssp import distributed
    from ssp._io import file_sha256
    from ssp.backbone.model import load_backbone
    from ssp.backbone.weights import backbone_label
    from ssp.data import get_dataset, make_fewshot_splits
    from ssp.features.store import FeatureStore, cached_features
    from ssp.run.records import find_run

    output_dir = Path(output_dir)
    dataset = get_dataset(cfg["dataset"], root, split_file=split_file)
    common = images_common_settings(cfg, dataset)
    label = backbone_label(cfg["backbone"], cfg["pretrained"])
    stubs = {(shots, seed, method): run_stub(dataset=dataset.name, backbone=label, method=method, shots=shots,
                                             seed=seed, common=common, cfg=cfg)
             for shots in cfg["shots"] for seed in cfg["seeds"] for method in cfg["methods"]}
    done = {k: r for k, r in ((k, find_run(output_dir, st)) for k, st in stubs.items()) if r is not None} \
        if skip_existing else {}
    if skip_existing and len(done) == len(stubs):
        echo(f"[ssp] {dataset.name} ({label}): all {len(stubs)} runs already done under {output_dir}; nothing to do")
        for r in done.values():
            echo_result(echo, r, reused=True)
        records = list(done.values())
        return records, (write_report(output_dir)[0] if write_table else "")
    backbone = load_backbone(cfg["backbone"], None if is_random_weights(cfg["pretrained"]) else cfg["pretrained"],
                             device=device, precision=cfg["precision"], quick_gelu=cfg.get("quick_gelu"))
    store = FeatureStore(cache_dir)
    extract_kw = {k: cfg[k] for k in ("batch_size", "num_workers") if cfg.get(k) is not None}
    extract_kw["progress"] = progress
    skip_bad = cfg.get("skip_bad_images", False)
    if not isinstance(skip_bad, bool):
        raise ValueError(f"config 'skip_bad_images' must be true or false, got {skip_bad!r}")
    extract_kw["skip_bad_images"] = skip_bad
    needs_local = any(m.endswith("+ssp") for m in cfg["methods"])
    recompute_text = recompute
    if distributed.is_active():
        _extract_all(cfg, dataset, backbone, store, needs_local, recompute, extract_kw)
        distributed.barrier()
        if not distributed.is_main():
            return [], ""
        # Everything is cached now: rank 0 goes on alone (reads, methods, writes).
        extract_kw["distributed"], recompute = False, False
        store.hits = -store.misses  # below, every file is read once more: count only files that existed before
    echo(f"[ssp] {dataset.name}: {len(dataset.classnames)} classes, train/val/test = "
         f"{len(dataset.train)}/{len(dataset.val) if dataset.val is not None else '-'}/{len(dataset.test)}; "
         f"backbone {cfg['backbone']} ({cfg['pretrained']}) on {backbone.device}; cache {store.root}")

    t0 = time.perf_counter()
    text_key = {"kind": "text_classifier", "backbone": backbone.identity,
                "classnames": dataset.classnames, "templates": dataset.templates}
    text = store.get_or_compute(
        text_key, lambda: {"text": backbone.text_classifier(dataset.classnames, dataset.templates)},
        recompute=recompute_text)["text"]
    test = Features.from_dict(cached_features(store, backbone, dataset.test, dataset=dataset.name, split="test",
                                              recompute=recompute, desc="test", **extract_kw))
    full_val = None
    if dataset.val is not None:
        full_val = Features.from_dict(cached_features(store, backbone, dataset.val, dataset=dataset.name,
                                                      split="val", recompute=recompute, desc="val", **extract_kw))
        val_index = _index_by_path(dataset.val, full_val.kept)
    shared_extract_s = time.perf_counter() - t0
    split_path = Path(split_file) if split_file is not None else None
    source = {"kind": "images", "dataset_root": str(Path(dataset.root).resolve()),
              "split_file": None if split_path is None else str(split_path.resolve()),
              "split_file_sha256": file_sha256(split_path) if split_path is not None and split_path.is_file() else None,
              **common["source"]}
    text_info = {"source": f"computed from the backbone's text encoder ({len(dataset.templates)} templates)",
                 "templates": list(dataset.templates)}
    backbone_info = {"model": cfg["backbone"], "pretrained": cfg["pretrained"], "identity": backbone.identity}
    summary = (f"images, val {cfg['val_policy']}, {cfg['views']} view(s), {cfg['precision']}")

    records = []
    for shots in cfg["shots"]:
        for seed in cfg["seeds"]:
            todo = [m for m in cfg["methods"] if (shots, seed, m) not in done]
            for m in cfg["methods"]:
                if (shots, seed, m) in done:
                    records.append(done[(shots, seed, m)])
                    echo_result(echo, done[(shots, seed, m)], reused=True)
            if not todo:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                splits = make_fewshot_splits(dataset, shots, seed, val_policy=cfg["val_policy"])
            sampling_warnings = [str(w.message) for w in caught]
            for msg in sampling_warnings:
                echo(f"[ssp] warning: {msg}")
            t0 = time.perf_counter()
            support = Features.from_dict(cached_features(
                store, backbone, splits.support, dataset=dataset.name, split="train", views=cfg["views"],
                with_patches=needs_local, seed=seed, recompute=recompute, desc=f"support {shots}-shot seed {seed}",
                **extract_kw))
            if full_val is not None:
                val = full_val.subset(torch.tensor([val_index[s.path] for s in splits.val if s.path in val_index],
                                                   dtype=torch.long))
            else:  # ImageNet: validation carved from train images not used as shots
                val = Features.from_dict(cached_features(
                    store, backbone, splits.val, dataset=dataset.name, split="train-as-val", recompute=recompute,
                    desc=f"val {shots}-shot seed {seed}", **extract_kw))
            extract_s = time.perf_counter() - t0
            skipped = {"test": _skipped(dataset.test, test), "support": _skipped(splits.support, support),
                       "val": ([p for p in (s.path for s in splits.val) if p not in val_index]
                               if full_val is not None else _skipped(splits.val, val))}
            n_skipped = sum(map(len, skipped.values()))
            if n_skipped:
                echo(f"[ssp] {shots}-shot seed {seed}: {n_skipped} unreadable image(s) left out (--skip-bad-images): "
                     + ", ".join(p for paths in skipped.values() for p in paths))
            protocol = {"val_policy": cfg["val_policy"], "views": cfg["views"],
                        "hyperparameters_chosen_on": "validation split",
                        "n_support": len(support.labels), "n_val": len(val.labels),
                        "n_test": len(test.labels), "n_classes": len(dataset.classnames)}
            seeds = {"few_shot_support": seed, "validation_subsample": seed, "augmented_views": seed,
                     "training": seed, "random_init": None if backbone.identity["weights"]["source"] != "random"
                     else backbone.identity["weights"].get("seed")}
            for method in todo:
                res = run_method(method, cfg, support, val, test, text, device=backbone.device, seed=seed,
                                 progress=progress)
                record = make_record(stubs[(shots, seed, method)], res, backbone=backbone_info, protocol=protocol,
                                     protocol_summary=summary, source=source, text_features=text_info,
                                     seeds=seeds, timings={"shared_features_s": shared_extract_s,
                                                           "support_val_features_s": extract_s},
                                     warnings_=sampling_warnings, cfg=cfg, device=backbone.device)
                record["skipped_images"] = skipped
                write_run(output_dir, record)
                records.append(record)
                echo_result(echo, record)
    echo(f"[ssp] feature cache {store.root}: {store.hits} file(s) reused, {store.misses} extracted")
    table = write_report(output_dir)[0] if write_table else ""
    return records, table

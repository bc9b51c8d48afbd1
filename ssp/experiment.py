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

from . import __version__
from ._checks import is_random_weights
from .report import write_report, write_run



@dataclass
class Features:
    """Global features ``[N, D]`` (L2-normalised), labels ``[N]``, optional local features
    ``[N, L, D]``, optional per-view global features ``[E, N, D]`` (each augmented pass's
    L2-normalised feature, of which ``global_`` is the normalised mean; training inputs of
    the fine-tuned adapters) and optional ``kept`` ``[N]`` (indices into the requested
    sample list when unreadable images were skipped)."""

    global_: torch.Tensor
    labels: torch.Tensor
    local: torch.Tensor | None = None
    views: torch.Tensor | None = None
    kept: torch.Tensor | None = None

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "Features":
        return cls(d["global"], d["labels"].long(), d.get("local"), d.get("views"), d.get("kept"))

    def subset(self, index: torch.Tensor) -> "Features":
        return Features(self.global_[index], self.labels[index],
                        None if self.local is None else self.local[index],
                        None if self.views is None else self.views[:, index],
                        None if self.kept is None else self.kept[index])


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
    pred = torch.as_tensor(model.predict(features.global_))
    return float((pred.cpu() == features.labels.cpu()).double().mean() * 100)


def _ssp_details(model) -> dict:
    proj = model.projector_
    ranks = torch.as_tensor(proj.class_ranks_)
    return {"vision_rank": int(proj.vision_rank_), "class_rank_min": int(ranks.min()),
            "class_rank_max": int(ranks.max()), "class_rank_mean": float(ranks.double().mean())}


def run_method(method: str, cfg: dict, support: Features, val: Features, test: Features,
               text_features: torch.Tensor, device=None, seed: int | None = None) -> MethodResult:
    """Fit ``method`` (a name of :mod:`ssp.registry`, optionally ``+ssp``) on the support set,
    choose its hyper-parameters on ``val``, score ``test`` once.

    ``seed`` seeds the training of fine-tuned methods (the few-shot seed in ``run_fewshot``).
    Warnings raised while fitting (e.g. a clamped ``n_channels``) are returned in
    ``details["warnings"]``.
    """
    from .projector import SSPProjector
    from .registry import parse_method
    from .search import validation_search

    spec, use_ssp = parse_method(method)
    embed_dim = support.global_.shape[1]
    timings: dict[str, float] = {}
    candidates = []  # (val score, model, params, details)
    rank_rules = cfg["ssp"]["rank"] if use_ssp else [None]
    fit_kw: dict = {"patch_features": support.local if use_ssp else None}
    extra: dict = {}
    if spec.fine_tuned:
        fit_kw.update(val_features=val.global_, val_labels=val.labels,
                      view_features=getattr(support, "views", None))
        if seed is not None:
            extra["seed"] = seed
    for rank in rank_rules:
        projector = None
        if use_ssp:
            s = cfg["ssp"]
            projector = SSPProjector(patch_top_k=s["patch_top_k"], class_top_k=s["class_top_k"],
                                     global_weight=s["global_weight"], rank=rank, device=device)
        model = spec.build(cfg, n_features=embed_dim, projector=projector, device=device, **extra)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(support.global_, support.labels, text_features=text_features, **fit_kw)
        timings["fit_s"] = timings.get("fit_s", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        # The zero-shot term of "vision"/"reference" routing is plain CLIP, so zero-shot+ssp is "paper" only.
        routings = (cfg["ssp"]["routing"] if spec.search_axes else ["paper"]) if use_ssp else None
        grid = spec.grid(cfg)
        if grid is not None and routings:
            grid["routing"] = list(routings)
        details: dict = {}
        if grid is None:
            score, params = accuracy(model, val), ({"routing": "paper"} if use_ssp else {})
            if use_ssp:
                model.set_params(routing="paper")
        else:
            result = validation_search(model, val.global_, val.labels, grid=grid)
            score, params = float(result.best_score_), dict(result.best_params_)
        timings["search_s"] = timings.get("search_s", 0.0) + time.perf_counter() - t0
        if use_ssp:
            params["rank"] = rank
            details = _ssp_details(model)
        if hasattr(model, "channels_"):
            details["n_channels"] = int(model.channels_.numel())
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


def backbone_label(backbone) -> str:
    """``RN50@openai``, ``tiny-rn@none`` (random), ``ViT-B-32@my_ckpt.pt``, ``hf-hub:org/repo``:
    runs with different weights never share a results folder or a table row."""
    weights = backbone.identity["weights"]
    source = weights["source"]
    if source == "hf-hub":
        return backbone.model_name
    if source == "random":
        return f"{backbone.model_name}@none"
    if source == "file":
        return f"{backbone.model_name}@{Path(str(backbone.pretrained)).name}"
    return f"{backbone.model_name}@{weights['tag']}"


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
    from .cache import cached_features
    from .data import make_fewshot_splits

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
                            with_local=needs_local, seed=seed, desc=f"support {shots}-shot seed {seed}", **kw)
            if dataset.val is None:
                cached_features(store, backbone, splits.val, dataset=dataset.name, split="train-as-val",
                                desc=f"val {shots}-shot seed {seed}", **kw)


def run_fewshot(cfg: dict, *, root: str | Path, output_dir: str | Path, cache_dir: str | Path | None = None,
                device: str | None = None, recompute: bool = False, split_file: str | Path | None = None,
                progress: bool = True, echo: Callable[[str], None] = print) -> tuple[list[dict], str]:
    """Run every (shots, seed, method) of ``cfg``; write one JSON per run and the report.

    ``cfg["skip_bad_images"]``: leave unreadable images out (listed in each run's
    ``skipped_images``) instead of stopping with an error. Under torchrun (an initialised
    process group, see :mod:`ssp.distributed`) every rank extracts its share of the features
    first; then rank 0 alone runs the methods and writes, the other ranks return ``([], "")``.

    Returns ``(records, table)``.
    """
    from . import distributed
    from .backbone import load_backbone
    from .cache import FeatureStore, cached_features
    from .data import get_dataset, make_fewshot_splits

    output_dir = Path(output_dir)
    dataset = get_dataset(cfg["dataset"], root, split_file=split_file)
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

    records = []
    for shots in cfg["shots"]:
        for seed in cfg["seeds"]:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                splits = make_fewshot_splits(dataset, shots, seed, val_policy=cfg["val_policy"])
            sampling_warnings = [str(w.message) for w in caught]
            for msg in sampling_warnings:
                echo(f"[ssp] warning: {msg}")
            t0 = time.perf_counter()
            support = Features.from_dict(cached_features(
                store, backbone, splits.support, dataset=dataset.name, split="train", views=cfg["views"],
                with_local=needs_local, seed=seed, recompute=recompute, desc=f"support {shots}-shot seed {seed}",
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
            for method in cfg["methods"]:
                res = run_method(method, cfg, support, val, test, text, device=backbone.device, seed=seed)
                record = {
                    "ssp_version": __version__,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "dataset": dataset.name,
                    "backbone": {"name": backbone_label(backbone),
                                 "model": cfg["backbone"], "pretrained": cfg["pretrained"],
                                 "identity": backbone.identity},
                    "method": method, "shots": shots, "seed": seed,
                    "protocol": {"val_policy": cfg["val_policy"], "views": cfg["views"],
                                 "hyperparameters_chosen_on": "validation split",
                                 "n_support": len(support.labels), "n_val": len(val.labels),
                                 "n_test": len(test.labels), "n_classes": len(dataset.classnames)},
                    "hyperparameters": res.hyperparameters,
                    "val_accuracy": res.val_accuracy,
                    "test_accuracy": res.test_accuracy,
                    "details": res.details,
                    "timings": {"shared_features_s": shared_extract_s, "support_val_features_s": extract_s,
                                **res.timings},
                    "warnings": sampling_warnings,
                    "skipped_images": skipped,
                    "config": cfg,
                }
                write_run(output_dir, record)
                records.append(record)
                for msg in res.details.get("warnings", []):
                    echo(f"[ssp] warning ({method}): {msg}")
                echo(f"[ssp] {dataset.name} {shots}-shot seed {seed} {method:<16} val {res.val_accuracy:6.2f}  "
                     f"test {res.test_accuracy:6.2f}  {res.hyperparameters}")
    echo(f"[ssp] feature cache {store.root}: {store.hits} file(s) reused, {store.misses} extracted")
    table, _ = write_report(output_dir)
    return records, table

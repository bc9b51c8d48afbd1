"""The few-shot protocol on a Tip-Adapter / APE feature-cache folder: no images, no backbone.

One-way flow: cache folder (:func:`ssp.features.tip_cache.load_feature_cache`) -> :class:`Features`
(support / validation / test) -> :func:`ssp.run.pipeline.run_method` -> run JSONs -> report.

Protocol on a cache (decisions, recorded in every run JSON):

* **Support set.** A cache holds one few-shot draw per shot count (``keys_{K}shots.pt``, the mean
  of the augmented views of each support image), so the seed does not change the support set;
  it seeds the validation/test split, the validation subsample and training.
* **Test split.** ``test_f.pt`` / ``test_l.pt`` when the cache has them. Caches without them
  (e.g. the published StanfordCars one) need ``test_from_val=F``: the validation features are
  split per class with a seeded permutation (``numpy.random.default_rng([seed, 2, c])`` for class
  ``c``), a fraction ``F`` of each class becoming the test part and the rest the search part.
  With ``test_from_val`` the cache's own test files, if any, are not used.
* **Validation policy.** The same ``val_policy`` as the images path, applied to the (search
  part of the) validation features: ``coop`` keeps min(K, 4) per class, an int that many,
  ``full`` everything (what the Tip-Adapter / APE scripts use). Per class, the kept features are
  the first ones of a seeded permutation (``default_rng([seed, K, 1, c])``, the stream of the
  images path), of the features in file order.
* **Text classifier.** ``text_weights*.pt`` in the folder, or a file given with
  ``text_features`` (``[C, D]`` or ``[D, C]``, ``.pt`` / ``.npy`` / ``.safetensors``). Without one
  the methods that need text are skipped with a message; methods whose registry entry says
  ``needs_text=False`` still run.
* **SSP.** Tip-Adapter / APE caches hold no local (patch) features, so ``+ssp`` methods are
  skipped with a message.
* **Fine-tuned methods** train on the cache keys (no per-view features exist in a cache); the
  run JSON says so (``details.training.training_inputs``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ssp.features.text import load_text_features
from ssp.features.tip_cache import available_shots, load_feature_cache
from ssp.features.types import Features
from ssp.report.tables import write_report
from ssp.run.pipeline import echo_result, make_record, run_method, run_stub
from ssp.run.records import find_run, write_run

_STAGE_VAL, _STAGE_TEST_FROM_VAL = 1, 2


@dataclass
class CacheSource:
    """A cache folder ready to run: its shot counts, text classifier and where each came from."""

    folder: Path
    shots: list[int]
    text: torch.Tensor | None          # [C, D] or None
    text_info: dict
    n_classes: int
    dim: int
    has_test: bool
    has_val: bool
    file_digests: dict


def cache_dataset_name(folder: str | Path) -> str | None:
    """The benchmark whose name is the folder's name (``.../stanford_cars`` -> ``stanford_cars``)."""
    from ssp.run.config import builtin_config_names

    name = Path(folder).expanduser().resolve().name.lower().replace("-", "_")
    return name if name in builtin_config_names() else None


def open_cache_source(folder: str | Path, *, text_features: str | Path | None = None,
                      text_layout: str = "auto") -> CacheSource:
    """Inspect a cache folder (reads the smallest shot count once) and load its text classifier."""
    from ssp._io import file_sha256

    folder = Path(folder).expanduser()
    shots = available_shots(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"feature-cache folder {folder} does not exist")
    if not shots:
        raise FileNotFoundError(f"{folder} holds no keys_<K>shots.pt file: not a Tip-Adapter / APE cache folder")
    probe = load_feature_cache(folder, shots[0])
    n_classes, dim = probe.n_classes, probe.n_features
    if text_features is not None:
        path = Path(text_features).expanduser()
        text = load_text_features(path, n_classes, dim, text_layout)
        info = {"source": "file given with --text-features", "file": str(path.resolve()),
                "sha256": file_sha256(path), "layout": text_layout, "templates": None}
    elif probe.text_features is not None:
        path = folder / probe.text_weights_file
        text = probe.text_features
        info = {"source": "the cache folder's text classifier", "file": str(path.resolve()),
                "sha256": file_sha256(path), "layout": "DC (Tip-Adapter format)",
                "templates": "not recorded in the cache"}
    else:
        text, info = None, {"source": None}
    digests = {p.name: file_sha256(p) for p in sorted(folder.iterdir())
               if p.is_file() and p.suffix == ".pt"}
    return CacheSource(folder=folder, shots=shots, text=text, text_info=info, n_classes=n_classes, dim=dim,
                       has_test=probe.test_features is not None, has_val=probe.val_features is not None,
                       file_digests=digests)


def split_validation(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split of validation indices into ``(search, test)``: for class ``c`` a
    permutation from ``numpy.random.default_rng([seed, 2, c])``; its first
    ``round(fraction * n_c)`` indices (at least one, and at most ``n_c - 1`` when ``n_c >= 2``) go
    to the test part. Both parts are sorted (file order)."""
    if not 0 < fraction < 1:
        raise ValueError(f"test_from_val must be a fraction in (0, 1), got {fraction}")
    y = labels.cpu().numpy()
    search, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        perm = idx[np.random.default_rng([int(seed), _STAGE_TEST_FROM_VAL, int(c)]).permutation(idx.size)]
        n_test = int(round(fraction * idx.size))
        n_test = min(max(n_test, 1), idx.size - 1) if idx.size >= 2 else 0
        test.extend(perm[:n_test].tolist())
        search.extend(perm[n_test:].tolist())
    return torch.tensor(sorted(search), dtype=torch.long), torch.tensor(sorted(test), dtype=torch.long)


def _subsample_val(labels: torch.Tensor, policy, shots: int, seed: int) -> torch.Tensor:
    """Indices kept by the validation policy (per class, seeded; see the module docstring)."""
    if policy == "full":
        return torch.arange(labels.numel())
    per_class = min(shots, 4) if policy == "coop" else int(policy)
    y = labels.cpu().numpy()
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        order = np.random.default_rng([int(seed), int(shots), _STAGE_VAL, int(c)]).permutation(idx.size)
        keep.extend(idx[order[: min(per_class, idx.size)]].tolist())
    return torch.tensor(sorted(keep), dtype=torch.long)


def runnable_methods(methods, source: CacheSource) -> tuple[list[str], list[str]]:
    """``(methods that can run, one-line reasons for those skipped)`` on ``source``."""
    from ssp.methods.registry import parse_method

    run, skipped_ssp, skipped_text = [], [], []
    for m in methods:
        spec, use_ssp = parse_method(m)
        if use_ssp:
            skipped_ssp.append(m)
        elif source.text is None and getattr(spec, "needs_text", True):
            skipped_text.append(m)
        else:
            run.append(m)
    reasons = []
    if skipped_ssp:
        reasons.append(f"skipping {', '.join(skipped_ssp)}: SSP needs local (patch) features, and a "
                       f"Tip-Adapter / APE cache ({source.folder}) holds global features only; run from "
                       "images (--root) for the +ssp methods")
    if skipped_text:
        reasons.append(f"skipping {', '.join(skipped_text)}: {source.folder} has no text classifier "
                       "(text_weights*.pt); pass --text-features FILE ([C, D] or [D, C]; .pt, .npy or "
                       ".safetensors)")
    return run, reasons


def features_common_settings(cfg: dict, source: CacheSource, test_from_val: float | None) -> dict:
    """Settings shared by every method of a feature-cache run (keyed into each run's settings)."""
    from ssp.run.records import settings_key

    return {"source": {"kind": "feature-cache", "files_digest": settings_key(source.file_digests),
                       "text_features_sha256": source.text_info.get("sha256")},
            "protocol": {"val_policy": cfg["val_policy"], "test_from_val": test_from_val}}


def run_fewshot_features(cfg: dict, *, folder: str | Path, output_dir: str | Path,
                         test_from_val: float | None = None, text_features: str | Path | None = None,
                         text_layout: str = "auto", backbone_name: str | None = None, device=None,
                         echo: Callable[[str], None] = print, skip_existing: bool = False,
                         write_table: bool = True, source: CacheSource | None = None,
                         progress: bool = True) -> tuple[list[dict], str]:
    """Run every (shots, seed, method) of ``cfg`` on a cache folder; write one JSON per run and the
    report. ``backbone_name`` labels the backbone the cache was extracted with (not verifiable
    from the files; default ``cache-D<D>``). Returns ``(records, table)``."""
    from ssp._utils import resolve_device

    output_dir = Path(output_dir)
    source = source or open_cache_source(folder, text_features=text_features, text_layout=text_layout)
    missing = [k for k in cfg["shots"] if k not in source.shots]
    if missing:
        raise FileNotFoundError(f"{source.folder} has no keys_<K>shots.pt for shots {missing} "
                                f"(shot counts present: {source.shots})")
    if not source.has_val:
        raise FileNotFoundError(f"{source.folder} has no validation features (val_f.pt / val_l.pt): "
                                "hyper-parameters are chosen on validation data, so they are required")
    if test_from_val is None and not source.has_test:
        raise FileNotFoundError(f"{source.folder} has no test features (test_f.pt / test_l.pt); pass "
                                "--test-from-val 0.5 to split the validation features into a search part "
                                "and a test part (seeded per class)")
    methods, reasons = runnable_methods(cfg["methods"], source)
    for reason in reasons:
        echo(f"[ssp] {reason}")
    if not methods:
        raise ValueError(f"nothing to run on {source.folder}: " + "; ".join(reasons))
    if test_from_val is not None and source.has_test:
        echo(f"[ssp] --test-from-val {test_from_val}: the test part is carved from validation; "
             f"{source.folder}/test_f.pt is not used")
    dataset = cfg["dataset"]
    label = f"{backbone_name}@cache" if backbone_name else f"cache-D{source.dim}"
    common = features_common_settings(cfg, source, test_from_val)
    stubs = {(k, s, m): run_stub(dataset=dataset, backbone=label, method=m, shots=k, seed=s, common=common, cfg=cfg)
             for k in cfg["shots"] for s in cfg["seeds"] for m in methods}
    done = ({key: r for key, r in ((key, find_run(output_dir, st)) for key, st in stubs.items()) if r is not None}
            if skip_existing else {})
    device = resolve_device(device)
    src_info = {"kind": "feature-cache", "folder": str(source.folder.resolve()), "files_sha256": source.file_digests,
                "support_draw": "fixed by the cache (one draw per shot count; the seed does not change it)"}
    summary = (f"feature cache {source.folder.name}, val {cfg['val_policy']}, "
               + (f"test = {test_from_val:g} of val per class (seeded)" if test_from_val else "cache test split")
               + f", text: {Path(source.text_info['file']).name if source.text_info.get('file') else 'none'}")
    echo(f"[ssp] {dataset} from {source.folder}: C={source.n_classes}, D={source.dim}, shots {source.shots}; "
         f"text: {source.text_info.get('source') or 'none'}; {len(done)} of {len(stubs)} runs already done")

    records = []
    for shots in cfg["shots"]:
        cache = None
        for seed in cfg["seeds"]:
            for m in methods:
                if (shots, seed, m) in done:
                    records.append(done[(shots, seed, m)])
                    echo_result(echo, done[(shots, seed, m)], reused=True)
            todo = [m for m in methods if (shots, seed, m) not in done]
            if not todo:
                continue
            t0 = time.perf_counter()
            if cache is None:
                cache = load_feature_cache(source.folder, shots)
            support = Features(cache.support_features, cache.support_labels)
            val_x, val_y = cache.val_features, cache.val_labels
            split = None
            if test_from_val is not None:
                search_idx, test_idx = split_validation(val_y, test_from_val, seed)
                test = Features(val_x[test_idx], val_y[test_idx])
                val_x, val_y = val_x[search_idx], val_y[search_idx]
                split = {"fraction": test_from_val, "seed": seed, "stratified": "per class",
                         "n_val_features": int(cache.val_labels.numel()), "n_search": int(search_idx.numel()),
                         "n_test": int(test_idx.numel())}
            else:
                test = Features(cache.test_features, cache.test_labels)
            keep = _subsample_val(val_y, cfg["val_policy"], shots, seed)
            val = Features(val_x[keep], val_y[keep])
            load_s = time.perf_counter() - t0
            protocol = {"val_policy": cfg["val_policy"], "views": "as in the cache (keys: mean of augmented views)",
                        "hyperparameters_chosen_on": "validation split" + (" (search part)" if split else ""),
                        "test_from_val": split, "n_support": int(support.labels.numel()),
                        "n_val": int(val.labels.numel()), "n_test": int(test.labels.numel()),
                        "n_classes": source.n_classes}
            seeds = {"few_shot_support": None, "test_from_val_split": seed if split else None,
                     "validation_subsample": seed if cfg["val_policy"] != "full" else None, "training": seed}
            for method in todo:
                text = source.text if source.text is not None else None
                res = run_method(method, cfg, support, val, test, text, device=device, seed=seed,
                                 progress=progress)
                record = make_record(stubs[(shots, seed, method)], res,
                                     backbone={"model": backbone_name, "pretrained": None,
                                               "note": "features read from a cache; backbone as labelled by the user"},
                                     protocol=protocol, protocol_summary=summary, source=src_info,
                                     text_features=source.text_info, seeds=seeds, timings={"load_features_s": load_s},
                                     warnings_=[], cfg=cfg, device=device)
                write_run(output_dir, record)
                records.append(record)
                echo_result(echo, record)
    table = write_report(output_dir)[0] if write_table else ""
    return records, table

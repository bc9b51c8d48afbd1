"""Where a run's features come from: one :class:`FeatureSource` protocol, two sources.

* :class:`ImageSource` -- a dataset of images (:mod:`ssp.data`) through a backbone
  (:mod:`ssp.backbone`) into the feature store (:mod:`ssp.features.store`).
* :class:`~ssp.run.cache_source.TipCacheSource` -- a Tip-Adapter cache folder
  (:mod:`ssp.features.tip_cache`): no images, no backbone; its own module.

The run loop (:func:`ssp.run.pipeline.run_fewshot`) asks a source for the settings shared by every
run (keyed into each run's file), opens it once when there is work to do, then asks it for the
support / validation / test :class:`~ssp.features.types.Features` of each (shots, seed).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable, Protocol

import torch

from ssp import distributed
from ssp._checks import is_random_weights
from ssp._io import file_sha256
from ssp.backbone.model import load_backbone
from ssp.backbone.weights import backbone_label
from ssp.data import get_dataset, ImageLoadError, load_image
from ssp.data.fewshot import check_support_after_skips, replace_unreadable_shots
from ssp.data.manifest import check_run_manifest, fewshot_splits, run_manifest
from ssp.data.prompts import resolve_prompts
from ssp.data.verify import check_dataset
from ssp.features.store import FeatureStore, cached_features
from ssp.features.text import stored_prompt_features
from ssp.features.types import Features
from ssp.run.records import sample_list_digest
from ssp.run.shift import shift_targets
from ssp.run.cache_source import TipCacheSource
from ssp.run.splits import Split, split_validation, test_only_split

__all__ = ["FeatureSource", "Split", "ImageSource", "make_source", "split_validation"]

Echo = Callable[[str], None]


class FeatureSource(Protocol):
    """What the run loop needs from a source of features."""

    dataset: str            # the dataset name of the runs
    label: str              # the backbone label of the runs (``RN50@openai``, ``cache-D512``)
    device: torch.device | str | None

    def common_settings(self) -> dict:
        """Settings shared by every run (source, backbone, protocol): part of each settings key."""

    def recorded_config(self, cfg: dict) -> dict:
        """The part of ``cfg`` this source uses: the ``config`` of its run JSONs."""

    def runnable(self, methods: list[str]) -> tuple[list[str], list[str]]:
        """``(methods that can run here, one-line reasons for those skipped)``."""

    def open(self, echo: Echo, *, support_classes: Callable[[int], int] | None = None) -> bool:
        """Load what every split shares (backbone, text classifier, test features); False when this
        process has nothing more to do (a torchrun rank other than 0, after extraction).
        ``support_classes``: ``C -> n``, the splits need support / validation images of the first
        ``n`` classes only (a protocol's :attr:`~ssp.run.protocols.Protocol.support_classes`)."""

    def split(self, shots: int, seed: int, echo: Echo) -> Split:
        """The support / validation / test features of one (shots, seed)."""

    def record_fields(self) -> dict:
        """``backbone``, ``source``, ``text_features`` and ``protocol_summary`` of the run JSONs."""

    def class_names(self) -> list[str] | None:
        """The class names in label order (None: the source does not know them)."""

    def text_classifier(self) -> torch.Tensor | None:
        """``[C, D]`` text classifier (None: none available)."""

    def prompt_features(self) -> torch.Tensor | None:
        """``[C, P, D]`` per-prompt text features (None: one prompt per class, the classifier)."""

    def close(self, echo: Echo) -> None:
        """Report on the work done (e.g. the feature store's reuse counts)."""


# ------------------------------------------------------------------------------------- images


def _index_by_path(samples, kept: torch.Tensor | None = None) -> dict[str, int]:
    """Sample path -> row of the features (``kept``: the rows' sample indices when images were skipped)."""
    rows = range(len(samples)) if kept is None else kept.tolist()
    return {samples[i].path: row for row, i in enumerate(rows)}


def _readable_with(load_image):
    """``sample -> bool``: whether its image file exists and decodes."""
    def readable(sample) -> bool:
        try:
            load_image(sample.path)
        except ImageLoadError:
            return False
        return True

    return readable


def _skipped(samples, features: Features) -> list[str]:
    """Paths of ``samples`` that have no row in ``features`` (unreadable images left out)."""
    if features.kept is None or len(features.kept) == len(samples):
        return []
    kept = set(features.kept.tolist())
    return [s.path for i, s in enumerate(samples) if i not in kept]


class ImageSource:
    """A dataset of images: the backbone's features, extracted once into the feature store.

    ``cfg`` is the merged config (backbone, pretrained, precision, views, val_policy, batch_size,
    num_workers, skip_bad_images). Under torchrun (an initialised process group, see
    :mod:`ssp.distributed`) :meth:`open` has every rank extract its share of every feature file
    the runs need; then rank 0 alone goes on (the other ranks' :meth:`open` returns False).
    """

    def __init__(self, cfg: dict, *, root: str | Path, store_dir: str | Path | None = None,
                 device: str | None = None, recompute: bool = False, split_file: str | Path | None = None,
                 progress: bool = True, split_manifest: dict | None = None,
                 eval_on: list[str] | None = None) -> None:
        self.cfg = cfg
        # the cheap part of `ssp-data verify` (split file readable, every listed image present):
        # a broken layout stops here, in seconds, with its fix -- before any backbone or extraction
        skip_bad = cfg.get("skip_bad_images", False)
        if not isinstance(skip_bad, bool):
            raise ValueError(f"config 'skip_bad_images' must be true or false, got {skip_bad!r}")
        checked = check_dataset(cfg["dataset"], root, split_file=split_file, missing_ok=skip_bad)
        self.data = get_dataset(cfg["dataset"], root, split_file=split_file, check_files=checked is None)
        self.split_sha256 = checked.split_sha256 if checked is not None else None
        self.split_official = checked.split_official if checked is not None else None
        self.manifest = split_manifest
        if split_manifest is not None:  # refused now, with the reason, if it does not fit the dataset on disk
            check_run_manifest(split_manifest, self.data, cfg["shots"], cfg["seeds"], val_policy=cfg["val_policy"])
        self.dataset = self.data.name
        self.label = backbone_label(cfg["backbone"], cfg["pretrained"])
        self.store_dir, self.device, self.recompute, self.progress = store_dir, device, recompute, progress
        self.split_file = Path(split_file) if split_file is not None else None
        lists = {name: (None if samples is None else sample_list_digest(samples, self.data.root))
                 for name, samples in (("train", self.data.train), ("val", self.data.val), ("test", self.data.test))}

        self.prompts = resolve_prompts(cfg.get("prompts"), dataset=self.data.name,
                                       classnames=self.data.classnames, templates=self.data.templates, root=root)
        self._common = {
            "source": {"kind": "images", "image_lists": lists, "templates": list(self.data.templates)},
            "backbone": {"model": cfg["backbone"], "pretrained": str(cfg["pretrained"]),
                         "precision": cfg["precision"], "quick_gelu": cfg.get("quick_gelu")},
            "protocol": {"val_policy": cfg["val_policy"], "views": cfg["views"]}}
        if self.prompts.spec != "dataset":  # the default keeps the settings keys of earlier runs
            self._common["prompts"] = self.prompts.record()
        if split_manifest is not None:  # the given draws, not the sampler's: another settings key
            self._common["protocol"]["split_manifest_sha256"] = split_manifest["sha256"]

        self.targets = shift_targets(self.data, eval_on or [], root)
        if self.targets:  # runs without --eval-on keep their settings keys
            self._common["eval_on"] = {t.name: {"image_list": sample_list_digest(t.data.test, t.data.root),
                                                "class_ids": list(t.data.class_ids)} for t in self.targets}
        self._needs_patches = False
        self.support_count: int | None = None   # set by open(): support of the first classes only

    def common_settings(self) -> dict:
        return self._common

    def recorded_config(self, cfg: dict) -> dict:
        return cfg

    def runnable(self, methods: list[str]) -> tuple[list[str], list[str]]:
        self._needs_patches = any(m.endswith("+ssp") for m in methods)
        return list(methods), []

    def _extract_kw(self) -> dict:
        cfg = self.cfg
        kw = {k: cfg[k] for k in ("batch_size", "num_workers") if cfg.get(k) is not None}
        kw.update(progress=self.progress, skip_bad_images=cfg.get("skip_bad_images", False))
        return kw

    def open(self, echo: Echo, *, support_classes: Callable[[int], int] | None = None) -> bool:
        cfg, data = self.cfg, self.data
        self.support_count = None if support_classes is None else int(support_classes(len(data.classnames)))
        self.backbone = load_backbone(cfg["backbone"], None if is_random_weights(cfg["pretrained"]) else cfg["pretrained"],
                                      device=self.device, precision=cfg["precision"], quick_gelu=cfg.get("quick_gelu"))
        self.device = self.backbone.device
        self.store = FeatureStore(self.store_dir)
        self._kw = self._extract_kw()
        recompute_text = self.recompute
        self.world_size = distributed.world_size() if distributed.is_active() else 1
        if distributed.is_active():
            self._extract_all()
            distributed.barrier()
            if not distributed.is_main():
                return False
            # Everything is in the store now: rank 0 goes on alone (reads, methods, writes).
            self._kw["distributed"], self.recompute = False, False
            self.store.hits = -self.store.misses  # every file is read once more below: count only older ones
        echo(f"[ssp] {data.name}: {len(data.classnames)} classes, train/val/test = "
             f"{len(data.train)}/{len(data.val) if data.val is not None else '-'}/{len(data.test)}; "
             f"backbone {cfg['backbone']} ({cfg['pretrained']}) on {self.backbone.device}; "
             f"feature store {self.store.root}")
        t0 = time.perf_counter()
        text_key = {"kind": "text_classifier", "backbone": self.backbone.identity,
                    "classnames": data.classnames, "templates": data.templates}
        if self.prompts.spec != "dataset":
            text_key = {**text_key, "templates": None, "sentences": self.prompts.sentences}
        self.text = self.store.get_or_compute(
            text_key, lambda: {"text": self.backbone.text_classifier(data.classnames, [],
                                                                      class_prompts=self.prompts.sentences)},
            recompute=recompute_text)["text"]
        self.test = self._features(data.test, split="test", desc="test")
        self.target_features = {t.name: (self._features(t.data.test, split="test", desc=f"test {t.name}",
                                                        dataset=t.name), t.source_index) for t in self.targets}
        self.full_val = None
        if data.val is not None and any(self.cfg["shots"]):   # 0 shots only (test-time): no validation read
            self.full_val = self._features(data.val, split="val", desc="val")
            self.val_index = _index_by_path(data.val, self.full_val.kept)
        self.shared_s = time.perf_counter() - t0
        return True

    def _features(self, samples, *, split: str, desc: str, dataset: str | None = None, **kw) -> Features:
        return Features.from_dict(cached_features(self.store, self.backbone, samples, dataset=dataset or self.data.name,
                                                  split=split, recompute=self.recompute, desc=desc,
                                                  **self._kw, **kw))

    def _draw(self, shots: int, seed: int):
        """The few-shot draw: the sampler's, or the given split manifest's (support and validation
        images of the first ``support_count`` classes only, when :meth:`open` was given a rule)."""
        draw = fewshot_splits(self.data, shots, seed, val_policy=self.cfg["val_policy"], manifest=self.manifest)
        n = self.support_count
        if n is not None:  # each class draws from its own seeded stream: the kept classes' shots are unchanged
            draw.support = [x for x in draw.support if x.label < n]
            draw.val = [x for x in draw.val if x.label < n]
        return draw

    def _extract_all(self) -> None:
        """Every feature file the runs need, extracted by all ranks together (torchrun)."""
        data, cfg = self.data, self.cfg
        self._features(data.test, split="test", desc="test")
        for t in self.targets:
            self._features(t.data.test, split="test", desc=f"test {t.name}", dataset=t.name)
        if data.val is not None and any(cfg["shots"]):
            self._features(data.val, split="val", desc="val")
        for shots in [k for k in cfg["shots"] if k > 0]:   # 0 shots (test-time): the test split only
            for seed in cfg["seeds"]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # rank 0 reports them in the run itself
                    draw = self._draw(shots, seed)
                self._features(draw.support, split="train", desc=f"support {shots}-shot seed {seed}",
                               views=cfg["views"], with_patches=self._needs_patches, seed=seed)
                if data.val is None:
                    self._features(draw.val, split="train-as-val", desc=f"val {shots}-shot seed {seed}")

    def split(self, shots: int, seed: int, echo: Echo) -> Split:
        cfg = self.cfg
        if shots == 0:
            return test_only_split(self.test, len(self.data.classnames), seed,
                                    extra={"skipped_images": {"test": _skipped(self.data.test, self.test)}})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            draw = self._draw(shots, seed)
        sampling_warnings = [str(w.message) for w in caught]
        t0 = time.perf_counter()
        support = self._features(draw.support, split="train", desc=f"support {shots}-shot seed {seed}",
                                 views=cfg["views"], with_patches=self._needs_patches, seed=seed)
        if self.full_val is not None:
            index = [self.val_index[s.path] for s in draw.val if s.path in self.val_index]
            val = self.full_val.subset(torch.tensor(index, dtype=torch.long))
        else:  # ImageNet: validation carved from train images not used as shots
            val = self._features(draw.val, split="train-as-val", desc=f"val {shots}-shot seed {seed}")
        bad_shots = _skipped(draw.support, support)
        replacements = []
        if bad_shots:  # each unreadable shot replaced by a readable train image of its class (seeded)
            draw, replacements = replace_unreadable_shots(draw, bad_shots, _readable_with(load_image))
            if replacements:
                support = self._features(draw.support, split="train", desc=f"support {shots}-shot seed {seed}",
                                         views=cfg["views"], with_patches=self._needs_patches, seed=seed)
                for r in replacements:
                    echo(f"[ssp] {shots}-shot seed {seed}: class {r['class']} ({r['classname']!r}): unreadable shot "
                         f"{r['replaced']} replaced by {r['by']} (--skip-bad-images; seeded draw from the train split)")
        extract_s = time.perf_counter() - t0
        bad_shots = list(dict.fromkeys(bad_shots + _skipped(draw.support, support)))
        skipped = {"test": _skipped(self.data.test, self.test), "support": bad_shots,
                   "val": ([p for p in (s.path for s in draw.val) if p not in self.val_index]
                           if self.full_val is not None else _skipped(draw.val, val))}
        n_skipped = sum(map(len, skipped.values()))
        check_support_after_skips(draw.support, support.kept, self.data.classnames)
        if n_skipped:
            echo(f"[ssp] {shots}-shot seed {seed}: {n_skipped} unreadable image(s) left out (--skip-bad-images): "
                 + ", ".join(p for paths in skipped.values() for p in paths))
        identity = self.backbone.identity["weights"]
        return Split(
            support=support, val=val, test=self.test,
            protocol={"val_policy": cfg["val_policy"], "views": cfg["views"],
                      "hyperparameters_chosen_on": "validation split",
                      "n_support": len(support.labels), "n_val": len(val.labels),
                      "n_test": len(self.test.labels), "n_classes": len(self.data.classnames),
                      **({} if self.support_count is None else {"support_of_first_classes": self.support_count})},
            seeds={"few_shot_support": seed, "validation_subsample": seed, "augmented_views": seed,
                   "training": seed, "random_init": identity.get("seed") if identity["source"] == "random" else None},
            timings={"shared_features_s": self.shared_s, "support_val_features_s": extract_s},
            warnings=sampling_warnings, targets=self.target_features,
            extra={"skipped_images": skipped, "replaced_shots": replacements,
                   "split_manifest": run_manifest(draw, split_file_sha256=self.split_sha256,
                                                  replacements=replacements)})

    def text_classifier(self) -> torch.Tensor:
        return self.text

    def prompt_features(self) -> torch.Tensor | None:
        tensor, self.prompt_info = stored_prompt_features(self.store, self.backbone, self.data.classnames,
                                                          self.prompts, recompute=self.recompute)
        return tensor

    def class_names(self) -> list[str] | None:
        return list(self.data.classnames)

    def record_fields(self) -> dict:
        cfg, data, path = self.cfg, self.data, self.split_file
        return {
            "backbone": {"model": cfg["backbone"], "pretrained": cfg["pretrained"], "identity": self.backbone.identity},
            "source": {"kind": "images", "dataset_root": str(Path(data.root).resolve()),
                       "split_file": None if path is None else str(path.resolve()),
                       "split_file_sha256": file_sha256(path) if path is not None and path.is_file() else None,
                       "split_definition_sha256": self.split_sha256, "split_is_official": self.split_official,
                       "split_manifest_given": None if self.manifest is None else self.manifest["sha256"],
                       "extraction_world_size": self.world_size, **self._common["source"]},
            "text_features": {"source": f"computed from the backbone's text encoder ({self.prompts.source}; "
                                        f"{len(self.prompts.sentences[0])} sentence(s) for the first class)",
                              "templates": list(self.prompts.templates), "prompts": self.prompts.record(),
                              **({"prompt_features": self.prompt_info} if getattr(self, "prompt_info", None) else {})},
            "protocol_summary": f"images, val {cfg['val_policy']}, {cfg['views']} view(s), {cfg['precision']}"
                                + ("" if self.prompts.spec == "dataset" else f", prompts {self.prompts.spec}")
                                + ("" if self.manifest is None else
                                   f", support from split manifest {self.manifest['sha256'][:10]}"),
        }

    def close(self, echo: Echo) -> None:
        echo(f"[ssp] feature store {self.store.root}: {self.store.hits} file(s) reused, "
             f"{self.store.misses} extracted")


def make_source(cfg: dict, *, root: str | Path | None = None, features: str | Path | None = None,
                device=None, split_file: str | Path | None = None, split_manifest: dict | None = None,
                store_dir: str | Path | None = None, recompute: bool = False, progress: bool = True,
                eval_on: list[str] | None = None, test_from_val: float | None = None,
                text_features: str | Path | None = None, text_layout: str = "auto",
                prompt_features: str | Path | None = None, backbone_name: str | None = None,
                check_shots: bool = True, require_test: bool = True) -> FeatureSource:
    """The one way the command-line tools build a feature source: images under ``root`` through
    the config's backbone (:class:`ImageSource`), or a Tip-Adapter cache folder ``features``
    (:class:`TipCacheSource`). Exactly one of the two; the other source's options are refused
    (``ValueError`` naming them) rather than silently ignored. ``cfg`` holds what the source reads:
    ``dataset``, ``shots``, ``seeds``, ``val_policy``, and for images ``backbone``, ``pretrained``,
    ``precision``, ``views`` (``quick_gelu``, ``batch_size``, ``num_workers``, ``skip_bad_images``,
    ``prompts`` optional)."""
    if (root is None) == (features is None):
        raise ValueError("a feature source is images (root=DATA_ROOT) or a Tip-Adapter cache folder "
                         "(features=DIR): give exactly one")
    images_only = {"split_file": split_file, "split_manifest": split_manifest, "store_dir": store_dir,
                   "recompute": recompute or None, "eval_on": eval_on or None}
    cache_only = {"test_from_val": test_from_val, "text_features": text_features, "prompt_features": prompt_features}
    given = [k for k, v in (images_only if features is not None else cache_only).items() if v is not None]
    if given:
        kind = "images (root=...)" if features is not None else "Tip-Adapter cache folders (features=DIR)"
        raise ValueError(f"{', '.join(given)}: only for {kind}, not for the source given")
    if features is not None:
        return TipCacheSource(cfg, folder=features, device=device, test_from_val=test_from_val,
                              text_features=text_features, text_layout=text_layout, prompt_features=prompt_features,
                              backbone_name=backbone_name, check_shots=check_shots, require_test=require_test)
    return ImageSource(cfg, root=root, store_dir=store_dir, device=device, recompute=recompute, split_file=split_file,
                       progress=progress, split_manifest=split_manifest, eval_on=eval_on)

"""A Tip-Adapter cache folder as a source of features (:class:`TipCacheSource`), and the checks
that a cache folder is filed under the right dataset.

Protocol on a Tip-Adapter cache folder (decisions, recorded in every run JSON):

* **Support set.** A cache holds one few-shot draw per shot count (``keys_{K}shots.pt``, the mean
  of the augmented views of each support image), so the seed does not change the support set;
  it seeds the validation/test split, the validation subsample and training.
* **Test split.** ``test_f.pt`` / ``test_l.pt`` when the cache has them. Caches without them
  (e.g. the published StanfordCars one) need ``test_from_val=F``: the validation features are
  split per class with a seeded permutation (``numpy.random.default_rng([seed, 2, c])`` for class
  ``c``), a fraction ``F`` of each class becoming the test part and the rest the search part.
  With ``test_from_val`` the cache's own test files, if any, are not used.
* **Validation policy.** The images path's ``val_policy`` on the (search part of the) validation
  features: ``coop`` keeps min(K, 4) per class, an int that many, ``full`` all (as the Tip-Adapter
  / APE scripts); per class, the first of a seeded permutation (``default_rng([seed, K, 1, c])``).
* **Text classifier.** ``text_weights*.pt`` in the folder, or a file given with
  ``text_features`` (``[C, D]`` or ``[D, C]``, ``.pt`` / ``.npy`` / ``.safetensors``). Without one
  the methods that need text are skipped with a message.
* **No patches, no views.** ``+ssp`` methods are skipped with a message; fine-tuned methods train
  on the cache keys (the run JSON says so in ``details.training.training_inputs``).
* **Class names** (per-class results): those of the CoOp split file shipped for the benchmark.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from ssp._io import file_sha256
from ssp._utils.devices import resolve_device
from ssp.data.benchmarks import canonical_name
from ssp.data.catalog import benchmark_class_count, list_sources, official_classnames
from ssp.data.fewshot import validation_subsample
from ssp.features.text import load_text_features, prompt_features_file
from ssp.features.tip_cache import available_shots, load_tip_adapter_cache
from ssp.features.types import Features
from ssp.methods.registry import parse_method
from ssp.run.config import builtin_config_names
from ssp.run.records import settings_key
from ssp.run.splits import Split, split_validation, test_only_split

__all__ = ["TipCacheSource", "IMAGE_ONLY_KEYS", "cache_dataset_name", "check_cache_dataset"]

Echo = Callable[[str], None]


def _skip_ssp_and_textless(methods: list[str], *, has_patches: bool, has_text: bool,
                           where: str) -> tuple[list[str], list[str]]:
    no_patches = [m for m in methods if parse_method(m)[1] and not has_patches]
    no_text = [m for m in methods if m not in no_patches and parse_method(m)[0].needs_text and not has_text]
    run = [m for m in methods if m not in no_patches and m not in no_text]
    reasons = []
    if no_patches:
        reasons.append(f"skipping {', '.join(no_patches)}: SSP needs patch features, and a Tip-Adapter cache "
                       f"folder ({where}) holds global features only; run from images (--root) for the +ssp "
                       "methods")
    if no_text:
        reasons.append(f"skipping {', '.join(no_text)}: {where} has no text classifier (text_weights*.pt); pass "
                       "--text-features FILE ([C, D] or [D, C]; .pt, .npy or .safetensors)")
    return run, reasons


def cache_dataset_name(folder: str | Path) -> str | None:
    """The benchmark a Tip-Adapter cache folder holds, from its name: ssp's names
    (``.../stanford_cars``) and the names the published caches use (``.../fgvc``; the aliases
    of :data:`ssp.data.benchmarks.ALIASES`). None when the name is no benchmark's."""
    name = Path(folder).expanduser().resolve().name.lower().replace("-", "_")
    for spelling in dict.fromkeys((name, name.replace("_", ""))):
        try:
            key = canonical_name(spelling)
        except ValueError:
            continue
        if key in builtin_config_names():
            return key
    return None


#: Config keys of images only (backbone weights, extraction, prompts): a Tip-Adapter cache folder
#: holds extracted features, so its runs neither use nor record them.
IMAGE_ONLY_KEYS = ("pretrained", "precision", "quick_gelu", "views", "batch_size", "num_workers",
                   "skip_bad_images", "prompts")


def check_cache_dataset(folder: str | Path, dataset: str, n_classes: int) -> None:
    """Refuse a Tip-Adapter cache folder filed under another dataset: its folder name names another
    benchmark, or its class count is not the dataset's (under the CoOp protocol)."""
    named = cache_dataset_name(folder)
    if named is not None and named != dataset:
        raise ValueError(f"Tip-Adapter cache folder {folder} holds {named} (its folder name), not {dataset}: "
                         f"run it as --dataset {named}, or rename the folder if its name is wrong")
    expected = benchmark_class_count(dataset)
    if expected is not None and expected != n_classes:
        same = [s.name for s in list_sources() if benchmark_class_count(s.name) == n_classes]
        hint = f" ({', '.join(same)} {'has' if len(same) == 1 else 'have'} {n_classes})" if same else ""
        raise ValueError(f"Tip-Adapter cache folder {folder} holds {n_classes} classes, {dataset} has {expected}: "
                         f"these are not {dataset}'s features; run it with the dataset it was extracted from"
                         f"{hint}")


class TipCacheSource:
    """A Tip-Adapter cache folder (``keys_<K>shots.pt``, ``values_<K>shots.pt``, ``val_f.pt``, ...).

    Opening reads the smallest shot count once (C, D, which splits exist) and the text classifier
    (``text_features``: a file, else the folder's ``text_weights*.pt``). ``backbone_name`` labels the
    backbone the cache was extracted with (not verifiable from the files; default ``cache-D<D>``).
    Errors (a missing folder, no keys files, no validation features, no test features without
    ``test_from_val``, missing shot counts) are raised here, before any run. ``require_test=False``
    accepts a folder without test features (splits then have ``test=None``): for training on the
    support set alone (``ssp-unmix train``), never for the few-shot protocol.
    """

    def __init__(self, cfg: dict, *, folder: str | Path, test_from_val: float | None = None,
                 text_features: str | Path | None = None, text_layout: str = "auto",
                 backbone_name: str | None = None, device=None, check_shots: bool = True,
                 require_test: bool = True, prompt_features: str | Path | None = None) -> None:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"Tip-Adapter cache folder {folder} does not exist")
        if cfg.get("prompts", "dataset") != "dataset":
            raise ValueError(f"prompts {cfg['prompts']!r}: a Tip-Adapter cache folder has no text encoder to encode "
                             "sentences with; its text classifier is its text_weights file or --text-features FILE "
                             "(run from images to choose the prompts)")
        self.shots = available_shots(folder)
        if not self.shots:
            raise FileNotFoundError(f"{folder} holds no keys_<K>shots.pt file: not a Tip-Adapter cache folder")
        probe = load_tip_adapter_cache(folder, self.shots[0], read_text=text_features is None)
        self.n_classes, self.dim = probe.n_classes, probe.n_features
        check_cache_dataset(folder, cfg["dataset"], self.n_classes)
        if text_features is not None:
            path = Path(text_features).expanduser()
            self.text = load_text_features(path, self.n_classes, self.dim, text_layout)
            self.text_info = {"source": "file given with --text-features", "file": str(path.resolve()),
                              "sha256": file_sha256(path), "layout": text_layout, "templates": None}
        elif probe.text_features is not None:
            path = folder / probe.text_weights_file
            self.text = probe.text_features
            self.text_info = {"source": "the cache folder's text classifier", "file": str(path.resolve()),
                              "sha256": file_sha256(path), "layout": "DC (Tip-Adapter format)",
                              "templates": "not recorded in the cache"}
        else:
            self.text, self.text_info = None, {"source": None}
        self.prompts, prompt_info = prompt_features_file(prompt_features, self.n_classes, self.dim)  # [C, P, D]
        self.text_info = {**self.text_info, **({"prompt_features": prompt_info} if prompt_info else {})}
        self.folder, self.cfg, self.test_from_val = folder, cfg, test_from_val
        self.has_test, self.has_val = probe.test_features is not None, probe.val_features is not None
        self.file_digests = {p.name: file_sha256(p) for p in sorted(folder.iterdir())
                             if p.is_file() and p.suffix == ".pt"}
        self.dataset = cfg["dataset"]
        self.label = f"{backbone_name}@cache" if backbone_name else f"cache-D{self.dim}"
        self.backbone_name = backbone_name
        self.device = resolve_device(device)
        if check_shots:
            missing = [k for k in cfg["shots"] if k > 0 and k not in self.shots]   # 0: test split only
            if missing:
                raise FileNotFoundError(f"{folder} has no keys_<K>shots.pt for shots {missing} "
                                        f"(shot counts present: {self.shots})")
        if not self.has_val:
            raise FileNotFoundError(f"{folder} has no validation features (val_f.pt / val_l.pt): "
                                    "hyper-parameters are chosen on validation data, so they are required")
        if test_from_val is None and not self.has_test and require_test:
            raise FileNotFoundError(f"{folder} has no test features (test_f.pt / test_l.pt); pass "
                                    "--test-from-val 0.5 to split the validation features into a search part "
                                    "and a test part (seeded per class)")
        self._common = {"source": {"kind": "tip-adapter-cache", "files_digest": settings_key(self.file_digests),
                                   "text_features_sha256": self.text_info.get("sha256")},
                        "protocol": {"val_policy": cfg["val_policy"], "test_from_val": test_from_val}}
        if prompt_info:  # only then: earlier runs keep their settings keys
            self._common["source"]["prompt_features_sha256"] = prompt_info["sha256"]
        self._loaded: tuple[int, object] | None = None

    def common_settings(self) -> dict:
        return self._common

    def recorded_config(self, cfg: dict) -> dict:
        """The config without the image-only keys (:data:`IMAGE_ONLY_KEYS`): a cache run uses none."""
        return {k: v for k, v in cfg.items() if k not in IMAGE_ONLY_KEYS}

    def runnable(self, methods: list[str]) -> tuple[list[str], list[str]]:
        return _skip_ssp_and_textless(list(methods), has_patches=False, has_text=self.text is not None,
                                      where=str(self.folder))

    def open(self, echo: Echo, *, support_classes=None) -> bool:
        # support_classes: a cache holds every class's keys already; the protocol takes what it needs
        if self.test_from_val is not None and self.has_test:
            echo(f"[ssp] --test-from-val {self.test_from_val}: the test part is carved from validation; "
                 f"{self.folder}/test_f.pt is not used")
        echo(f"[ssp] {self.dataset} from {self.folder}: C={self.n_classes}, D={self.dim}, shots {self.shots}; "
             f"text: {self.text_info.get('source') or 'none'}")
        return True

    def split(self, shots: int, seed: int, echo: Echo) -> Split:
        t0 = time.perf_counter()
        wanted = shots or self.shots[0]   # 0 shots (test-time): any cache file holds val / test
        if self._loaded is None or self._loaded[0] != wanted:
            self._loaded = (wanted, load_tip_adapter_cache(self.folder, wanted, read_text=False))  # read once, above
        cache = self._loaded[1]
        val_x, val_y = cache.val_features, cache.val_labels
        split = None
        if self.test_from_val is not None:
            search_idx, test_idx = split_validation(val_y, self.test_from_val, seed)
            test = Features(val_x[test_idx], val_y[test_idx])
            val_x, val_y = val_x[search_idx], val_y[search_idx]
            split = {"fraction": self.test_from_val, "seed": seed, "stratified": "per class",
                     "n_val_features": int(cache.val_labels.numel()), "n_search": int(search_idx.numel()),
                     "n_test": int(test_idx.numel())}
        else:
            test = None if cache.test_features is None else Features(cache.test_features, cache.test_labels)
        if shots == 0:   # test-time: the test part only (the same as the few-shot runs of this seed)
            out = test_only_split(test, self.n_classes, seed, timings={"load_features_s": time.perf_counter() - t0})
            out.protocol["test_from_val"], out.seeds["test_from_val_split"] = split, seed if split else None
            return out
        support = Features(cache.support_features, cache.support_labels)
        policy = self.cfg["val_policy"]
        keep = torch.tensor(validation_subsample(val_y.tolist(), policy, shots, seed), dtype=torch.long)
        val = Features(val_x[keep], val_y[keep])
        return Split(
            support=support, val=val, test=test,
            protocol={"val_policy": policy, "views": "as in the cache (keys: mean of augmented views)",
                      "hyperparameters_chosen_on": "validation split" + (" (search part)" if split else ""),
                      "test_from_val": split, "n_support": int(support.labels.numel()),
                      "n_val": int(val.labels.numel()), "n_test": 0 if test is None else int(test.labels.numel()),
                      "n_classes": self.n_classes},
            seeds={"few_shot_support": None, "test_from_val_split": seed if split else None,
                   "validation_subsample": seed if policy != "full" else None, "training": seed},
            timings={"load_features_s": time.perf_counter() - t0})

    def text_classifier(self) -> torch.Tensor | None:
        return self.text

    def prompt_features(self) -> torch.Tensor | None:
        return self.prompts

    def class_names(self) -> list[str] | None:
        names = official_classnames(self.dataset)   # Tip-Adapter builds its caches in that file's order
        return names if names is not None and len(names) == self.n_classes else None

    def record_fields(self) -> dict:
        text_file = self.text_info.get("file")
        return {
            "backbone": {"model": self.backbone_name, "pretrained": None,
                         "note": "features read from a Tip-Adapter cache folder; backbone as labelled by the user"},
            "source": {"kind": "tip-adapter-cache", "folder": str(self.folder.resolve()), "files_sha256": self.file_digests,
                       "support_draw": "fixed by the cache (one draw per shot count; the seed does not change it)",
                       "class_names": f"CoOp split file shipped with ssp for {self.dataset}" if self.class_names() else None},
            "text_features": self.text_info,
            "protocol_summary": (f"Tip-Adapter cache folder {self.folder.name}, val {self.cfg['val_policy']}, "
                                 + (f"test = {self.test_from_val:g} of val per class (seeded)" if self.test_from_val
                                    else "cache test split")
                                 + f", text: {Path(text_file).name if text_file else 'none'}"),
        }

    def close(self, echo: Echo) -> None:
        pass

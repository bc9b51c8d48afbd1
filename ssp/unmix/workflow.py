"""Unmix-CLIP end to end: MFI analysis, projector training, multi-label recognition and
segmentation, each writing one JSON record (and its artefacts in a folder of the same name).

``ssp-unmix`` (:mod:`ssp.cli.unmix`) parses flags and calls these functions; the features of
single-label training come from the run stage's feature source (images or a Tip-Adapter cache
folder, :func:`ssp.run.sources.make_source`), which the caller opens and passes in as
:class:`~ssp.features.types.Features`. Every function prints its summary through ``echo`` and
returns ``{"json": record path, "folder": artefact folder}``.
"""
from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ssp._io import write_json_atomic
from ssp._utils.normalize import l2_normalize
from ssp.data import get_dataset, load_image
from ssp.data.base import read_split_file
from ssp.features.store import FeatureStore
from ssp.features.types import Features
from ssp.unmix.data import get_multilabel_dataset, get_segmentation_dataset
from ssp.unmix.features import dense_features
from ssp.unmix.metrics import ConfusionMatrix, mean_average_precision
from ssp.unmix.mfi import mfi_score, mfi_summary, plot_mfi_heatmap, plot_mfi_histogram
from ssp.unmix.projector import UnmixProjector, dual_prompt_logits
from ssp.unmix.segment import DEFAULT_BACKGROUND_PROMPTS, ZeroShotSegmenter, save_palette_mask, save_side_by_side

__all__ = ["MULTILABEL_NAMES", "POSITIVE_TEMPLATE", "NEGATIVE_TEMPLATE", "UsageError", "is_multilabel", "check_multilabel",
           "new_run", "read_classnames", "dataset_classifier", "analyze",
           "train_multilabel", "train_single_label", "save_trained", "mlr", "segment"]

MULTILABEL_NAMES = ("voc", "voc2007", "voc2012", "coco", "coco2014", "coco2017")
POSITIVE_TEMPLATE = "A photo of a {}."
NEGATIVE_TEMPLATE = "A photo without a {}."

Echo = Callable[[str], None]


class UsageError(ValueError):
    """Inputs that do not fit together (a projector of another width, a single-label dataset for
    ``mlr``, ...): reported as one line naming the option to change."""


def is_multilabel(name: str | None) -> bool:
    """True for the VOC / COCO names (``voc``, ``voc2012``, ``coco2017``, ...)."""
    return name is not None and name.lower().replace("-", "").replace("_", "") in MULTILABEL_NAMES


def check_multilabel(dataset: str, command: str) -> None:
    """Refuse a dataset that is not VOC / COCO for ``mlr`` and ``segment``."""
    if not is_multilabel(dataset):
        what = "a multi-label dataset" if command == "mlr" else "a VOC or COCO segmentation set"
        raise UsageError(f"`ssp-unmix {command}` needs {what} ({', '.join(MULTILABEL_NAMES)}), got {dataset!r}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def new_run(output: str | Path, command: str, label: str) -> tuple[str, Path, Path]:
    """A fresh run id ``unmix-<command>-<label>-<UTC time>``, its JSON path and its artefact
    folder (created; an existing id is never reused)."""
    out = Path(output)
    base = f"unmix-{command}-{label}-{_now()}"
    run_id, n = base, 1
    while (out / f"{run_id}.json").exists() or (out / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    folder = out / run_id
    folder.mkdir(parents=True)
    return run_id, out / f"{run_id}.json", folder


def _record(provenance: dict, command: str, run_id: str) -> dict:
    return {"tool": "ssp-unmix", "command": command, "run_id": run_id,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **provenance}


def read_classnames(spec: str | None, n: int) -> list[str] | None:
    """Class names for plots and confusers: ``FILE`` (one name per line) or ``split:FILE`` (a
    CoOp split JSON, names in label order); ``n`` names are required."""
    if spec is None:
        return None
    if spec.startswith("split:"):
        p = Path(spec[len("split:"):]).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"split file {p} not found (--classnames split:FILE)")
        names = read_split_file(p, p.parent).classnames
    else:
        p = Path(spec).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"class-name file {p} not found (give a text file with one name per line, "
                                    "or split:FILE for a CoOp split JSON)")
        names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != n:
        raise UsageError(f"{p} lists {len(names)} class names but the classifier has {n} classes")
    return names


def dataset_classifier(dataset: str, root: str | Path, split: str | None = None) -> tuple[list[str], list[str]]:
    """``(classnames, templates)`` of a dataset: VOC / COCO with the positive prompt, a
    classification benchmark with its templates."""
    if is_multilabel(dataset):
        ds = get_multilabel_dataset(dataset, root, split=split)
        return ds.classnames, [POSITIVE_TEMPLATE]
    ds = get_dataset(dataset, root)
    return ds.classnames, ds.templates


def _load_projector(path: str | Path, device) -> UnmixProjector:
    return UnmixProjector.load(path, device=device)


def _store(store_dir: str | Path | None) -> FeatureStore:
    return FeatureStore(store_dir)


# ------------------------------------------------------------------------------------ analyze


def analyze(text: torch.Tensor, *, label: str, output: str | Path, provenance: dict,
            classnames: list[str] | None = None, projector: str | Path | None = None, device=None,
            top_k: int = 3, echo: Echo = print) -> dict:
    """MFI of a ``[C, D]`` text classifier (and after the projector saved at ``projector``):
    summary, top confusers, heatmaps and histogram."""
    record_extra: dict[str, Any] = {}
    projected = None
    if projector is not None:
        proj = _load_projector(projector, device)
        if proj.n_features_in_ != text.shape[1]:
            raise UsageError(f"projector {projector} expects D = {proj.n_features_in_}, the classifier has "
                             f"D = {text.shape[1]}")
        projected = proj.transform_text(text)
        record_extra["projector"] = str(projector)
    run_id, json_path, folder = new_run(output, "analyze", label)
    summary = mfi_summary(text, classnames, projected=projected, k=top_k)
    files = {"heatmap": plot_mfi_heatmap(text, folder / "mfi_heatmap.png", classnames)}
    if projected is not None:
        files["heatmap_projected"] = plot_mfi_heatmap(projected, folder / "mfi_heatmap_projected.png", classnames,
                                                      title=None)
    files["histogram"] = plot_mfi_histogram(text, folder / "mfi_histogram.png", after=projected)
    record = {**_record(provenance, "analyze", run_id), **record_extra, **summary, "files": files}
    write_json_atomic(json_path, record)
    line = f"MFI {summary['mfi']:.4f} over {summary['n_classes']} classes (D = {summary['dim']})"
    if projected is not None:
        line += (f"; after the projector {summary['projected']['mfi']:.4f} "
                 f"(drop {100 * summary['mfi_drop']:.1f} %)")
    echo(line)
    worst = sorted(summary["top_confusers"], key=lambda r: -r["confusers"][0][1] if r["confusers"] else 0)[:3]
    for r in worst:
        echo(f"  {r['class']}: " + ", ".join(f"{n} {v:.3f}" for n, v in r["confusers"]))
    return {"json": json_path, "folder": folder}


# -------------------------------------------------------------------------------------- train


def _accuracy(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> float:
    return float(((l2_normalize(x) @ l2_normalize(t).T).argmax(1).cpu() == y.cpu()).float().mean()) * 100


def train_multilabel(projector: UnmixProjector, backbone, *, dataset: str, root: str | Path,
                     split: str | None, image_size: int, store_dir: str | Path | None, batch_size: int,
                     recompute: bool = False, progress: bool = True) -> tuple[torch.Tensor, str, dict]:
    """Fit ``projector`` on a VOC / COCO split (dense features, dual prompts, ASL). Returns the
    positive text classifier, the data label and the record's fields."""
    ds = get_multilabel_dataset(dataset, root, split=split)
    feats = dense_features(backbone, [s.path for s in ds.samples], image_size=image_size, dataset=ds.name,
                           split=ds.split, store=_store(store_dir), batch_size=batch_size, recompute=recompute,
                           progress=progress)
    pos = backbone.text_classifier(ds.classnames, [POSITIVE_TEMPLATE])
    neg = backbone.text_classifier(ds.classnames, [NEGATIVE_TEMPLATE])
    projector.fit(feats["global"], ds.targets(), text_features=pos, negative_text_features=neg,
                  patch_features=feats["local"])
    return pos, ds.name, {"task": "multi_label", "n_images": len(ds.samples), "split": ds.split,
                          "classnames": ds.classnames, "backbone": backbone.identity, "image_size": image_size,
                          "prompts": [POSITIVE_TEMPLATE, NEGATIVE_TEMPLATE]}


def train_single_label(projector: UnmixProjector, support: Features, text: torch.Tensor, *, shots: int,
                       val: Features | None = None, test: Features | None = None,
                       select_on_val: bool = False) -> dict:
    """Fit ``projector`` on a few-shot support set (``text``: ``[C, D]``); ``select_on_val`` keeps
    the epoch with the best validation score. Returns the record's fields, with the zero-shot
    and projected accuracy on ``val`` and ``test`` (those given)."""
    if select_on_val and val is None:
        raise UsageError("--select-on-val: this data has no validation split")
    validation = (val.image_features, val.labels) if select_on_val else None
    projector.fit(support.image_features, support.labels, text_features=text, validation=validation)
    accuracy = {}
    for name, part in (("val", val), ("test", test)):
        if part is None:
            continue
        x, y = part.image_features, part.labels
        accuracy[name] = {"zero_shot": _accuracy(x, text, y),
                          "projected": _accuracy(projector.transform_image(x), projector.transform_text(text), y),
                          "n": int(x.shape[0])}
    return {"task": "single_label", "shots": shots, "n_support": int(support.image_features.shape[0]),
            "accuracy": accuracy, "selection": "validation" if validation is not None else "last epoch"}


def save_trained(projector: UnmixProjector, text: torch.Tensor, *, label: str, output: str | Path,
                 provenance: dict, fields: dict, echo: Echo = print) -> dict:
    """Save a fitted projector beside its record: MFI before / after, settings, history."""
    run_id, json_path, folder = new_run(output, "train", label)
    weights, config = projector.save(folder / "projector")
    before, after = mfi_score(text), mfi_score(projector.transform_text(text))
    record = {**_record(provenance, "train", run_id), **fields,
              "mfi": {"before": before, "after": after, "drop": 1 - after / before},
              "projector": {"path": str(folder / "projector"), "weights": weights, "config": config,
                            "params": projector.config()["params"], "best_epoch": projector.best_epoch_},
              "history": projector.history_}
    write_json_atomic(json_path, record)
    echo(f"MFI {before:.4f} -> {after:.4f} (drop {100 * (1 - after / before):.1f} %)")
    for name, acc in record.get("accuracy", {}).items():
        echo(f"{name} accuracy ({acc['n']} images): zero-shot {acc['zero_shot']:.2f}, projected {acc['projected']:.2f}")
    echo(f"projector saved: {folder / 'projector'}.safetensors / .json")
    return {"json": json_path, "folder": folder}


# ---------------------------------------------------------------------------------------- mlr


def mlr(backbone, *, dataset: str, root: str | Path, split: str | None, image_size: int,
        store_dir: str | Path | None, batch_size: int, output: str | Path, provenance: dict,
        projector: str | Path | None = None, device=None, recompute: bool = False, progress: bool = True,
        echo: Echo = print) -> dict:
    """Multi-label recognition mAP on VOC / COCO: raw CLIP dual prompts, or a trained projector."""
    check_multilabel(dataset, "mlr")
    ds = get_multilabel_dataset(dataset, root, split=split)
    targets = ds.targets()
    if not (targets == 1).any():
        raise UsageError(f"{ds.name}/{ds.split} has no positive label; mAP is undefined")
    feats = dense_features(backbone, [s.path for s in ds.samples], image_size=image_size, dataset=ds.name,
                           split=ds.split, store=_store(store_dir), batch_size=batch_size,
                           recompute=recompute, progress=progress)
    pos = backbone.text_classifier(ds.classnames, [POSITIVE_TEMPLATE])
    neg = backbone.text_classifier(ds.classnames, [NEGATIVE_TEMPLATE])
    if projector is not None:
        proj = _load_projector(projector, device)
        if proj.task_ != "multi_label":
            raise UsageError(f"projector {projector} was trained on single-label data; train one with "
                             "`ssp-unmix train --dataset voc|coco`")
        if proj.n_classes_ != len(ds.classnames):
            raise UsageError(f"projector {projector} has {proj.n_classes_} classes, {ds.name} has "
                             f"{len(ds.classnames)}")
        t, t_neg = proj.transform_text(pos), proj.transform_text(neg)
        img = proj.transform_image(feats["local"].to(proj.device_))
        scale = (proj.patch_scale, proj.pair_scale)
        method = "unmix-projector"
    else:
        t, t_neg = l2_normalize(pos), l2_normalize(neg)
        img = feats["local"].to(t.device)
        scale = (20.0, 5.0)
        method = "clip-dual-prompt"
    with torch.no_grad():
        scores = torch.cat([dual_prompt_logits(img[s:s + 64].to(t.device), t, t_neg, patch_scale=scale[0],
                                               pair_scale=scale[1]) for s in range(0, img.shape[0], 64)])
    m_ap, per_class = mean_average_precision(scores.cpu().numpy(), targets)
    run_id, json_path, folder = new_run(output, "mlr", ds.name)
    folder.rmdir()  # mlr writes the JSON only
    record = {**_record(provenance, "mlr", run_id), "split": ds.split, "method": method,
              "projector": None if projector is None else str(projector), "backbone": backbone.identity,
              "image_size": image_size, "n_images": len(ds.samples), "mAP": m_ap,
              "per_class_ap": {n: v for n, v in zip(ds.classnames, per_class)},
              "classes_with_positives": int((~np.isnan(per_class)).sum())}
    write_json_atomic(json_path, record)
    echo(f"{ds.name}/{ds.split}: mAP {m_ap:.2f} over {record['classes_with_positives']} classes with positives "
         f"({len(ds.samples)} images, {method})")
    return {"json": json_path}


# ------------------------------------------------------------------------------------ segment


def segment(backbone, *, dataset: str, root: str | Path, split: str | None, output: str | Path,
            provenance: dict, projector: str | Path | None = None, device=None, backbone_name: str = "",
            background: str = "threshold",
            threshold: float = 0.1, logit_scale: float = 50.0, short_side: int = 448, crop: int = 448,
            stride: int = 224, max_images: int | None = None, examples: int = 4, progress: bool = True,
            echo: Echo = print) -> dict:
    """Zero-shot semantic segmentation and mIoU on VOC / COCO (``background``: ``threshold``
    (VOC21), ``prompts`` (background concepts) or ``none`` (VOC20: background not scored))."""
    check_multilabel(dataset, "segment")
    if max_images is not None and max_images < 1:
        raise UsageError(f"--max-images must be >= 1, got {max_images}")
    ds = get_segmentation_dataset(dataset, root, split=split)
    proj = _load_projector(projector, device) if projector else None
    if proj is not None and proj.n_features_in_ != backbone.n_features:
        raise UsageError(f"projector {projector} expects D = {proj.n_features_in_}, backbone "
                         f"{backbone_name} gives D = {backbone.n_features}")
    text = backbone.text_classifier(ds.classnames, [POSITIVE_TEMPLATE])
    bg_mode = None if background == "none" else background
    bg_text = (backbone.text_classifier(list(DEFAULT_BACKGROUND_PROMPTS), [POSITIVE_TEMPLATE])
               if bg_mode == "prompts" else None)
    segmenter = ZeroShotSegmenter(backbone, text, projector=proj, background=bg_mode, threshold=threshold,
                                  background_text_features=bg_text, logit_scale=logit_scale,
                                  short_side=short_side, crop=crop, stride=stride)
    samples = ds.samples[:max_images] if max_images else ds.samples
    run_id, json_path, folder = new_run(output, "segment", ds.name)
    (folder / "masks").mkdir()
    n_classes = ds.n_classes + 1
    conf = ConfusionMatrix(n_classes, ignore_index=ds.ignore_index)
    pictures = []
    try:
        for i, sample in enumerate(tqdm(samples, desc="segmenting", unit="img", disable=None if progress else True)):
            image = load_image(sample.image)
            target = ds.mask(i)
            if target.shape != (image.height, image.width):
                raise ValueError(f"mask of {sample.image} is {target.shape[1]}x{target.shape[0]} px, the image "
                                 f"{image.width}x{image.height}")
            pred = segmenter.predict(image)
            eval_target = target.copy()
            if bg_mode is None:  # VOC20-style: background pixels are not scored
                eval_target[eval_target == 0] = ds.ignore_index
            conf.update(pred, eval_target)
            save_palette_mask(pred, folder / "masks" / f"{sample.key}.png")
            if i < examples:
                pictures.append(save_side_by_side(image, target, pred, folder / f"example_{sample.key}.png"))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # no run folder without its record
        raise
    miou, per_class = conf.compute()
    names = ["background"] + list(ds.classnames)
    protocol = f"{ds.n_classes} classes, background ignored" if bg_mode is None else \
        f"{n_classes} classes with background ({background})"
    record = {**_record(provenance, "segment", run_id), "split": ds.split, "protocol": protocol,
              "method": "unmix-projector" if proj is not None else "clip-dense",
              "projector": None if projector is None else str(projector), "backbone": backbone.identity,
              "settings": {"background": background, "threshold": threshold, "logit_scale": logit_scale,
                           "short_side": short_side, "crop": crop, "stride": stride},
              "n_images": len(samples), "mIoU": miou,
              "per_class_iou": {n: v for n, v in zip(names, per_class)},
              "masks": folder / "masks", "examples": pictures}
    write_json_atomic(json_path, record)
    echo(f"{ds.name}/{ds.split}: mIoU {miou:.2f} ({protocol}; {len(samples)} images, {record['method']})")
    echo(f"masks in {folder / 'masks'}, {len(pictures)} side-by-side picture(s) in {folder}")
    return {"json": json_path, "folder": folder}

"""``ssp-unmix``: Unmix-CLIP from the command line.

Subcommands (one JSON record per run in ``--output``, artefacts in a folder of the same name)::

    ssp-unmix analyze --text-features caches/stanford_cars/text_weights.pt
    ssp-unmix analyze --dataset voc --root DATA --backbone RN101 --pretrained openai
    ssp-unmix train   --features caches/stanford_cars --shots 16
    ssp-unmix train   --dataset voc2007 --root DATA --split trainval
    ssp-unmix mlr     --dataset voc2007 --root DATA --projector runs/unmix/<run>/projector
    ssp-unmix segment --dataset voc --root DATA --projector runs/unmix/<run>/projector
"""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ssp._io import write_json_atomic
from ssp.cli._args import int_at_least, with_cli_messages

MULTILABEL_NAMES = ("voc", "voc2007", "voc2012", "coco", "coco2014", "coco2017")
POSITIVE_TEMPLATE = "A photo of a {}."
NEGATIVE_TEMPLATE = "A photo without a {}."


class UsageError(ValueError):
    """Bad command-line input (reported as one line)."""


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, *, backbone: bool = True) -> None:
    p.add_argument("--dataset", help="voc, voc2007, voc2012, coco, coco2014, coco2017, or a classification "
                                     "benchmark (ssp-fewshot --list-datasets)")
    p.add_argument("--root", default=os.environ.get("SSP_DATA_ROOT"),
                   help="folder holding the dataset (or the dataset folder itself); default $SSP_DATA_ROOT")
    p.add_argument("--split", help="dataset split (VOC: val/test/trainval, COCO: val2014/train2017, ...)")
    if backbone:
        p.add_argument("--backbone", default="ViT-B-32", help="open_clip model name, hf-hub:org/repo, or a "
                                                              "model-config JSON (default ViT-B-32)")
        p.add_argument("--pretrained", default="openai",
                       help="open_clip tag, a local checkpoint, or 'none' (random weights: smoke tests only)")
        p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
        p.add_argument("--feature-store", metavar="DIR", default=None,
                       help="feature store folder: extracted features, reused across runs (default "
                            "$SSP_FEATURE_STORE, else ~/.cache/ssp)")
        p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
        p.add_argument("--recompute", action="store_true", help="ignore cached features")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--output", default="runs/unmix", help="results folder (one JSON per run + artefacts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def _training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("projector training")
    g.add_argument("--epochs", type=int, default=50)
    g.add_argument("--train-batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=0.002)
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    g.add_argument("--mfi-weight", type=float, default=None,
                   help="weight of the MFI loss (default 1.0 with cross-entropy, 7e-5 with ASL)")
    g.add_argument("--mfi-form", choices=["class", "barlow"], default="class")
    g.add_argument("--embed-dim", type=int, default=256, help="projected width D'")
    g.add_argument("--seed", type=int, default=0, help="seeds the projector (and the few-shot draw)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssp-unmix",
        description="Unmix-CLIP: measure mutual feature information (MFI) between CLIP class features, "
                    "train projectors that disentangle them, and use them for multi-label recognition "
                    "and zero-shot semantic segmentation.")
    sub = p.add_subparsers(dest="command", metavar="{analyze,train,mlr,segment}")
    sub.required = True

    a = sub.add_parser("analyze", help="MFI of a dataset's zero-shot classifier or of a text-feature file")
    _common(a)
    a.add_argument("--text-features", help="a text classifier file (.pt tensor, .npy, .safetensors)")
    a.add_argument("--text-layout", choices=["auto", "CD", "DC"], default="auto",
                   help="orientation of --text-features: CD one row per class, DC one column per class "
                        "(Tip-Adapter / APE files); auto: the side of unit-norm class vectors, else the side "
                        "of a known embedding width, is D")
    a.add_argument("--classnames", metavar="FILE|split:FILE",
                   help="class names for plots and confusers: a text file with one name per line, or "
                        "split:FILE to read them from a CoOp split JSON (split_zhou_<Name>.json) in label order")
    a.add_argument("--projector", help="a trained projector (path without suffix): also report the MFI after it")
    a.add_argument("--top-k", type=int_at_least(1), default=3, help="top confusers listed per class")

    t = sub.add_parser("train", help="fit the Unmix projectors; saves safetensors + JSON config")
    _common(t)
    t.add_argument("--features", metavar="DIR", help="a Tip-Adapter cache folder (keys_<K>shots.pt, values_<K>shots.pt, "
                                           "val_f.pt, text_weights*.pt): train on its support features")
    t.add_argument("--shots", type=int, default=16, help="K support images per class (classification data)")
    t.add_argument("--select-on-val", action="store_true",
                   help="keep the epoch with the best validation score (classification data)")
    t.add_argument("--image-size", type=int, default=448, help="input size for multi-label data")
    _training_flags(t)

    m = sub.add_parser("mlr", help="multi-label recognition mAP (raw CLIP dual prompts, or a trained projector)")
    _common(m)
    m.add_argument("--projector", help="a multi-label projector from `ssp-unmix train` (path without suffix)")
    m.add_argument("--image-size", type=int, default=448)

    s = sub.add_parser("segment", help="zero-shot semantic segmentation and mIoU")
    _common(s)
    s.add_argument("--projector", help="a projector from `ssp-unmix train` (default: raw CLIP features)")
    s.add_argument("--background", choices=["threshold", "prompts", "none"], default="threshold",
                   help="threshold (VOC21), prompts (background concepts), none (VOC20: background ignored)")
    s.add_argument("--threshold", type=float, default=0.1, help="background probability threshold")
    s.add_argument("--logit-scale", type=float, default=50.0)
    s.add_argument("--short-side", type=int, default=448)
    s.add_argument("--crop", type=int, default=448)
    s.add_argument("--stride", type=int, default=224)
    s.add_argument("--max-images", type=int, help="only the first N images of the split")
    s.add_argument("--examples", type=int, default=4, help="side-by-side pictures for the first N images")
    return p


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def _run_dir(output: str, command: str, dataset: str) -> tuple[str, Path, Path]:
    """A fresh run id, its JSON path and its artefact folder (never reusing an existing one)."""
    out = Path(output)
    base = f"unmix-{command}-{dataset}-{_now()}"
    run_id, n = base, 1
    while (out / f"{run_id}.json").exists() or (out / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    folder = out / run_id
    folder.mkdir(parents=True)
    return run_id, out / f"{run_id}.json", folder


def _base_record(args, command: str, run_id: str) -> dict:
    return {"tool": "ssp-unmix", "command": command, "run_id": run_id,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv[1:], "dataset": args.dataset, "root": args.root, "split": getattr(args, "split", None)}


def _backbone(args):
    from ssp.backbone.model import load_backbone

    from ssp.cli._args import random_weights_banner

    with random_weights_banner(str(args.pretrained).lower() == "none", what="Scores"):
        return load_backbone(args.backbone, args.pretrained, device=args.device, precision=args.precision,
                             cache_dir=None)


def _store(args):
    from ssp.features.store import FeatureStore

    return FeatureStore(args.feature_store)


def _need(args, *names: str) -> None:
    for name in names:
        if not getattr(args, name):
            hint = " (or set $SSP_DATA_ROOT)" if name == "root" else ""
            raise UsageError(f"--{name.replace('_', '-')} is required for `ssp-unmix {args.command}`{hint}")


def _is_multilabel(name: str | None) -> bool:
    return name is not None and name.lower().replace("-", "").replace("_", "") in MULTILABEL_NAMES


def _load_projector(path: str, device):
    from ssp.unmix.projector import UnmixProjector

    return UnmixProjector.load(path, device=device)


def _classnames(spec: str | None, n: int) -> list[str] | None:
    """Class names for plots and confusers: ``FILE`` (one name per line) or ``split:FILE`` (a
    CoOp split JSON, names in label order)."""
    if spec is None:
        return None
    if spec.startswith("split:"):
        from ssp.data.base import read_split_file

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


def _dataset_classifier(args, backbone):
    """(classnames, templates) of --dataset."""
    if _is_multilabel(args.dataset):
        from ssp.unmix.data import get_multilabel_dataset

        ds = get_multilabel_dataset(args.dataset, args.root, split=args.split)
        return ds.classnames, [POSITIVE_TEMPLATE]
    from ssp.data import get_dataset

    ds = get_dataset(args.dataset, args.root)
    return ds.classnames, ds.templates


# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------

def cmd_analyze(args) -> dict:
    from ssp.unmix.mfi import mfi_summary, plot_mfi_heatmap, plot_mfi_histogram

    if bool(args.text_features) == bool(args.dataset):
        raise UsageError("give either --text-features FILE or --dataset NAME (with --root)")
    record_extra: dict[str, Any] = {}
    if args.text_features:
        from ssp.features.text import load_text_features

        text, layout = load_text_features(args.text_features, layout=args.text_layout, return_layout=True)
        classnames = _classnames(args.classnames, text.shape[0])
        record_extra = {"text_features": str(Path(args.text_features).resolve()), "text_layout": layout}
        label = Path(args.text_features).stem
    else:
        _need(args, "root")
        backbone = _backbone(args)
        classnames, templates = _dataset_classifier(args, backbone)
        text = backbone.text_classifier(classnames, templates).cpu()
        record_extra = {"backbone": backbone.identity, "templates": templates}
        label = args.dataset
    projected = None
    if args.projector:
        projector = _load_projector(args.projector, args.device)
        if projector.n_features_in_ != text.shape[1]:
            raise UsageError(f"projector {args.projector} expects D = {projector.n_features_in_}, the classifier has "
                             f"D = {text.shape[1]}")
        projected = projector.transform_text(text)
        record_extra["projector"] = str(args.projector)
    run_id, json_path, folder = _run_dir(args.output, "analyze", label)
    summary = mfi_summary(text, classnames, projected=projected, k=args.top_k)
    heat = plot_mfi_heatmap(text, folder / "mfi_heatmap.png", classnames)
    files = {"heatmap": heat}
    if projected is not None:
        files["heatmap_projected"] = plot_mfi_heatmap(projected, folder / "mfi_heatmap_projected.png", classnames,
                                                      title=None)
    files["histogram"] = plot_mfi_histogram(text, folder / "mfi_histogram.png", after=projected)
    record = {**_base_record(args, "analyze", run_id), **record_extra, **summary, "files": files}
    write_json_atomic(json_path, record)
    line = f"MFI {summary['mfi']:.4f} over {summary['n_classes']} classes (D = {summary['dim']})"
    if projected is not None:
        line += (f"; after the projector {summary['projected']['mfi']:.4f} "
                 f"(drop {100 * summary['mfi_drop']:.1f} %)")
    print(line)
    worst = sorted(summary["top_confusers"], key=lambda r: -r["confusers"][0][1] if r["confusers"] else 0)[:3]
    for r in worst:
        print(f"  {r['class']}: " + ", ".join(f"{n} {v:.3f}" for n, v in r["confusers"]))
    return {"json": json_path, "folder": folder}


def _projector_from_args(args):
    from ssp.unmix.projector import UnmixProjector

    return UnmixProjector(embed_dim=args.embed_dim, mfi_weight=args.mfi_weight, mfi_form=args.mfi_form,
                          epochs=args.epochs, batch_size=args.train_batch_size, lr=args.lr,
                          optimizer=args.optimizer, seed=args.seed, device=args.device,
                          progress=not args.no_progress)


def _accuracy(x, t, y) -> float:
    from ssp._utils.normalize import l2_normalize

    return float(((l2_normalize(x) @ l2_normalize(t).T).argmax(1).cpu() == y.cpu()).float().mean()) * 100


def cmd_train(args) -> dict:
    from ssp.unmix.mfi import mfi_score

    if args.features and args.dataset:
        raise UsageError("give either --features DIR or --dataset NAME, not both")
    if not args.features and not args.dataset:
        raise UsageError("give --features DIR (a Tip-Adapter cache folder) or --dataset NAME with --root")
    projector = _projector_from_args(args)
    record: dict[str, Any] = {}
    if args.dataset and _is_multilabel(args.dataset):
        _need(args, "root")
        from ssp.unmix.data import get_multilabel_dataset
        from ssp.unmix.features import dense_features

        backbone = _backbone(args)
        ds = get_multilabel_dataset(args.dataset, args.root, split=args.split)
        feats = dense_features(backbone, [s.path for s in ds.samples], image_size=args.image_size,
                               dataset=ds.name, split=ds.split, store=_store(args), batch_size=args.batch_size,
                               recompute=args.recompute, progress=not args.no_progress)
        pos = backbone.text_classifier(ds.classnames, [POSITIVE_TEMPLATE])
        neg = backbone.text_classifier(ds.classnames, [NEGATIVE_TEMPLATE])
        targets = ds.targets()
        projector.fit(feats["global"], targets, text_features=pos, negative_text_features=neg,
                      patch_features=feats["local"])
        text = pos
        label = ds.name
        record.update(task="multi_label", n_images=len(ds.samples), split=ds.split, classnames=ds.classnames,
                      backbone=backbone.identity, image_size=args.image_size,
                      prompts=[POSITIVE_TEMPLATE, NEGATIVE_TEMPLATE])
    else:
        if args.features:
            from ssp.features.tip_cache import load_tip_adapter_cache

            cache = load_tip_adapter_cache(args.features, args.shots)
            if cache.text_features is None:
                raise UsageError(f"{args.features} has no text_weights*.pt file; the projector needs the "
                                 "class text features")
            text, support, labels = cache.text_features, cache.support_features, cache.support_labels
            splits = {"val": (cache.val_features, cache.val_labels), "test": (cache.test_features, cache.test_labels)}
            label = Path(args.features).name
            record.update(tip_adapter_cache=str(Path(args.features).resolve()), text_weights=cache.text_weights_file)
        else:
            _need(args, "root")
            from ssp.data import get_dataset, make_fewshot_splits
            from ssp.features.store import cached_features

            backbone = _backbone(args)
            ds = get_dataset(args.dataset, args.root)
            fs = make_fewshot_splits(ds, args.shots, args.seed)
            store = _store(args)
            feats = {}
            for name, samples in (("support", fs.support), ("val", fs.val), ("test", fs.test)):
                if samples:
                    feats[name] = cached_features(store, backbone, samples, dataset=ds.name,
                                                  split=f"{name}-{args.shots}shot-seed{args.seed}" if name == "support" else name,
                                                  batch_size=args.batch_size, recompute=args.recompute,
                                                  progress=not args.no_progress)
            text = backbone.text_classifier(ds.classnames, ds.templates).cpu()
            support, labels = feats["support"]["global"], feats["support"]["labels"]
            splits = {k: ((feats[k]["global"], feats[k]["labels"]) if k in feats else (None, None))
                      for k in ("val", "test")}
            label = ds.name
            record.update(backbone=backbone.identity, templates=ds.templates)
        validation = splits["val"] if (args.select_on_val and splits["val"][0] is not None) else None
        if args.select_on_val and validation is None:
            raise UsageError("--select-on-val: this data has no validation split")
        projector.fit(support, labels, text_features=text, validation=validation)
        accuracy = {}
        for name, (x, y) in splits.items():
            if x is None:
                continue
            accuracy[name] = {"zero_shot": _accuracy(x, text, y),
                              "projected": _accuracy(projector.transform_image(x), projector.transform_text(text), y),
                              "n": int(x.shape[0])}
        record.update(task="single_label", shots=args.shots, n_support=int(support.shape[0]), accuracy=accuracy,
                      selection="validation" if validation is not None else "last epoch")
    run_id, json_path, folder = _run_dir(args.output, "train", label)
    weights, config = projector.save(folder / "projector")
    before, after = mfi_score(text), mfi_score(projector.transform_text(text))
    record = {**_base_record(args, "train", run_id), **record,
              "mfi": {"before": before, "after": after, "drop": 1 - after / before},
              "projector": {"path": str(folder / "projector"), "weights": weights, "config": config,
                            "params": projector.config()["params"], "best_epoch": projector.best_epoch_},
              "history": projector.history_}
    write_json_atomic(json_path, record)
    print(f"MFI {before:.4f} -> {after:.4f} (drop {100 * (1 - after / before):.1f} %)")
    for name, acc in record.get("accuracy", {}).items():
        print(f"{name} accuracy ({acc['n']} images): zero-shot {acc['zero_shot']:.2f}, projected {acc['projected']:.2f}")
    print(f"projector saved: {folder / 'projector'}.safetensors / .json")
    return {"json": json_path, "folder": folder}


def cmd_mlr(args) -> dict:
    import torch

    from ssp._utils.normalize import l2_normalize
    from ssp.unmix.data import get_multilabel_dataset
    from ssp.unmix.features import dense_features
    from ssp.unmix.metrics import mean_average_precision
    from ssp.unmix.projector import dual_prompt_logits

    _need(args, "dataset", "root")
    if not _is_multilabel(args.dataset):
        raise UsageError(f"`ssp-unmix mlr` needs a multi-label dataset ({', '.join(MULTILABEL_NAMES)}), "
                         f"got {args.dataset!r}")
    backbone = _backbone(args)
    ds = get_multilabel_dataset(args.dataset, args.root, split=args.split)
    targets = ds.targets()
    if not (targets == 1).any():
        raise UsageError(f"{ds.name}/{ds.split} has no positive label; mAP is undefined")
    feats = dense_features(backbone, [s.path for s in ds.samples], image_size=args.image_size, dataset=ds.name,
                           split=ds.split, store=_store(args), batch_size=args.batch_size,
                           recompute=args.recompute, progress=not args.no_progress)
    pos = backbone.text_classifier(ds.classnames, [POSITIVE_TEMPLATE])
    neg = backbone.text_classifier(ds.classnames, [NEGATIVE_TEMPLATE])
    if args.projector:
        projector = _load_projector(args.projector, args.device)
        if projector.task_ != "multi_label":
            raise UsageError(f"projector {args.projector} was trained on single-label data; train one with "
                             "`ssp-unmix train --dataset voc|coco`")
        if projector.n_classes_ != len(ds.classnames):
            raise UsageError(f"projector {args.projector} has {projector.n_classes_} classes, {ds.name} has "
                             f"{len(ds.classnames)}")
        t = projector.transform_text(pos)
        t_neg = projector.transform_text(neg)
        img = projector.transform_image(feats["local"].to(projector.device_))
        scale = (projector.patch_scale, projector.pair_scale)
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
    run_id, json_path, folder = _run_dir(args.output, "mlr", ds.name)
    folder.rmdir()  # mlr writes the JSON only
    record = {**_base_record(args, "mlr", run_id), "split": ds.split, "method": method,
              "projector": args.projector, "backbone": backbone.identity, "image_size": args.image_size,
              "n_images": len(ds.samples), "mAP": m_ap,
              "per_class_ap": {n: v for n, v in zip(ds.classnames, per_class)},
              "classes_with_positives": int((~__import__("numpy").isnan(per_class)).sum())}
    write_json_atomic(json_path, record)
    print(f"{ds.name}/{ds.split}: mAP {m_ap:.2f} over {record['classes_with_positives']} classes with positives "
          f"({len(ds.samples)} images, {method})")
    return {"json": json_path}


def cmd_segment(args) -> dict:
    from ssp.data import load_image
    from ssp.unmix.data import get_segmentation_dataset
    from ssp.unmix.metrics import ConfusionMatrix
    from ssp.unmix.segment import (
        DEFAULT_BACKGROUND_PROMPTS,
        ZeroShotSegmenter,
        save_palette_mask,
        save_side_by_side,
    )

    _need(args, "dataset", "root")
    if not _is_multilabel(args.dataset):
        raise UsageError(f"`ssp-unmix segment` needs a VOC or COCO segmentation set, got {args.dataset!r}")
    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"--max-images must be >= 1, got {args.max_images}")
    ds = get_segmentation_dataset(args.dataset, args.root, split=args.split)
    backbone = _backbone(args)
    projector = _load_projector(args.projector, args.device) if args.projector else None
    if projector is not None and projector.n_features_in_ != backbone.n_features:
        raise UsageError(f"projector {args.projector} expects D = {projector.n_features_in_}, backbone "
                         f"{args.backbone} gives D = {backbone.n_features}")
    text = backbone.text_classifier(ds.classnames, [POSITIVE_TEMPLATE])
    background = None if args.background == "none" else args.background
    bg_text = (backbone.text_classifier(list(DEFAULT_BACKGROUND_PROMPTS), [POSITIVE_TEMPLATE])
               if background == "prompts" else None)
    segmenter = ZeroShotSegmenter(backbone, text, projector=projector, background=background,
                                  threshold=args.threshold, background_text_features=bg_text,
                                  logit_scale=args.logit_scale, short_side=args.short_side, crop=args.crop,
                                  stride=args.stride)
    samples = ds.samples[:args.max_images] if args.max_images else ds.samples
    run_id, json_path, folder = _run_dir(args.output, "segment", ds.name)
    (folder / "masks").mkdir()
    n_classes = ds.n_classes + 1
    conf = ConfusionMatrix(n_classes, ignore_index=ds.ignore_index)
    examples = []
    from tqdm.auto import tqdm

    try:
        for i, sample in enumerate(tqdm(samples, desc="segmenting", unit="img",
                                        disable=None if not args.no_progress else True)):
            image = load_image(sample.image)
            target = ds.mask(i)
            if target.shape != (image.height, image.width):
                raise ValueError(f"mask of {sample.image} is {target.shape[1]}x{target.shape[0]} px, the image "
                                 f"{image.width}x{image.height}")
            pred = segmenter.predict(image)
            eval_target = target.copy()
            if background is None:  # VOC20-style: background pixels are not scored
                eval_target[eval_target == 0] = ds.ignore_index
            conf.update(pred, eval_target)
            save_palette_mask(pred, folder / "masks" / f"{sample.key}.png")
            if i < args.examples:
                examples.append(save_side_by_side(image, target, pred, folder / f"example_{sample.key}.png"))
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # no run folder without its record
        raise
    miou, per_class = conf.compute()
    names = ["background"] + list(ds.classnames)
    protocol = f"{ds.n_classes} classes, background ignored" if background is None else \
        f"{n_classes} classes with background ({args.background})"
    record = {**_base_record(args, "segment", run_id), "split": ds.split, "protocol": protocol,
              "method": "unmix-projector" if projector is not None else "clip-dense",
              "projector": args.projector, "backbone": backbone.identity,
              "settings": {"background": args.background, "threshold": args.threshold,
                           "logit_scale": args.logit_scale, "short_side": args.short_side, "crop": args.crop,
                           "stride": args.stride},
              "n_images": len(samples), "mIoU": miou,
              "per_class_iou": {n: v for n, v in zip(names, per_class)},
              "masks": folder / "masks", "examples": examples}
    write_json_atomic(json_path, record)
    print(f"{ds.name}/{ds.split}: mIoU {miou:.2f} ({protocol}; {len(samples)} images, {record['method']})")
    print(f"masks in {folder / 'masks'}, {len(examples)} side-by-side picture(s) in {folder}")
    return {"json": json_path, "folder": folder}


COMMANDS = {"analyze": cmd_analyze, "train": cmd_train, "mlr": cmd_mlr, "segment": cmd_segment}


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(levelname)s: %(message)s")
    try:
        result = COMMANDS[args.command](args)
    except UsageError as err:
        if args.debug:
            raise
        print(f"ssp-unmix {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError, NotImplementedError, OSError) as err:
        if args.debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"ssp-unmix {args.command}: error: {message} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    print(f"record: {result['json']}")
    return 0


main = with_cli_messages(_main)


if __name__ == "__main__":
    sys.exit(main())

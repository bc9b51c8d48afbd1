"""``ssp-unmix``: Unmix-CLIP from the command line, a thin parser over :mod:`ssp.unmix.workflow`
(single-label training reads its features through :func:`ssp.run.sources.make_source`).

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
import logging
import os
import sys
from pathlib import Path

from ssp._checks import is_random_weights
from ssp.cli._args import int_at_least, random_weights_banner, with_cli_messages

# ssp.unmix.workflow (torch, open_clip) and ssp.run.sources are imported inside the commands,
# after parsing: `ssp-unmix --help` stays fast.


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
# commands: flags -> ssp.unmix.workflow
# ---------------------------------------------------------------------------------------------

def _provenance(args) -> dict:
    return {"argv": sys.argv[1:], "dataset": args.dataset, "root": args.root, "split": getattr(args, "split", None)}


def _need(args, *names: str) -> None:
    from ssp.unmix.workflow import UsageError

    for name in names:
        if not getattr(args, name):
            hint = " (or set $SSP_DATA_ROOT)" if name == "root" else ""
            raise UsageError(f"--{name.replace('_', '-')} is required for `ssp-unmix {args.command}`{hint}")


def _backbone(args):
    from ssp.backbone.model import load_backbone

    with random_weights_banner(is_random_weights(args.pretrained), what="Scores"):
        return load_backbone(args.backbone, args.pretrained, device=args.device, precision=args.precision,
                             cache_dir=None)


def cmd_analyze(args) -> dict:
    from ssp.unmix import workflow

    if bool(args.text_features) == bool(args.dataset):
        raise workflow.UsageError("give either --text-features FILE or --dataset NAME (with --root)")
    if args.text_features:
        from ssp.features.text import load_text_features

        text, layout = load_text_features(args.text_features, layout=args.text_layout, return_layout=True)
        classnames = workflow.read_classnames(args.classnames, text.shape[0])
        extra = {"text_features": str(Path(args.text_features).resolve()), "text_layout": layout}
        label = Path(args.text_features).stem
    else:
        _need(args, "root")
        backbone = _backbone(args)
        classnames, templates = workflow.dataset_classifier(args.dataset, args.root, args.split)
        text = backbone.text_classifier(classnames, templates).cpu()
        extra = {"backbone": backbone.identity, "templates": templates}
        label = args.dataset
    return workflow.analyze(text, label=label, output=args.output, provenance={**_provenance(args), **extra},
                            classnames=classnames, projector=args.projector, device=args.device, top_k=args.top_k)


def _single_label_source(args):
    """The support / validation / test features and the text classifier of `train` on
    classification data, through the run stage's feature source (images or a cache folder)."""
    from ssp.run.cache_source import cache_dataset_name
    from ssp.run.sources import make_source
    from ssp.unmix.workflow import UsageError

    quiet = lambda _: None  # noqa: E731  (the record and the summary say what was read)
    common = {"shots": [args.shots], "seeds": [args.seed]}
    if args.features:
        folder = Path(args.features).expanduser()
        # the whole validation split scores the projector, and a cache without test features is fine here
        cfg = {**common, "dataset": cache_dataset_name(folder) or folder.name, "val_policy": "full"}
        source = make_source(cfg, features=folder, device=args.device, require_test=False)
        if source.text_classifier() is None:
            raise UsageError(f"{args.features} has no text_weights*.pt file; the projector needs the class text "
                             "features")
        fields = {"tip_adapter_cache": str(folder.resolve()),
                  "text_weights": Path(source.text_info["file"]).name}
        label = Path(args.features).name
    else:
        _need(args, "root")
        cfg = {**common, "dataset": args.dataset, "val_policy": "coop", "views": 1, "backbone": args.backbone,
               "pretrained": args.pretrained, "precision": args.precision, "quick_gelu": None,
               "batch_size": args.batch_size, "num_workers": None, "skip_bad_images": False, "prompts": "dataset"}
        source = make_source(cfg, root=args.root, store_dir=args.feature_store, device=args.device,
                             recompute=args.recompute, progress=not args.no_progress)
        fields, label = {}, source.dataset
    with random_weights_banner(is_random_weights(cfg.get("pretrained", "")), what="Scores"):
        source.open(quiet)  # loads the backbone (images)
    split = source.split(args.shots, args.seed, quiet)
    if not args.features:
        fields = {"backbone": source.backbone.identity, "templates": list(source.data.templates)}
    return split, source.text_classifier().cpu(), label, fields


def cmd_train(args) -> dict:
    from ssp.unmix import workflow
    from ssp.unmix.projector import UnmixProjector

    if args.features and args.dataset:
        raise workflow.UsageError("give either --features DIR or --dataset NAME, not both")
    if not args.features and not args.dataset:
        raise workflow.UsageError("give --features DIR (a Tip-Adapter cache folder) or --dataset NAME with --root")
    projector = UnmixProjector(embed_dim=args.embed_dim, mfi_weight=args.mfi_weight, mfi_form=args.mfi_form,
                               epochs=args.epochs, batch_size=args.train_batch_size, lr=args.lr,
                               optimizer=args.optimizer, seed=args.seed, device=args.device,
                               progress=not args.no_progress)
    if args.dataset and workflow.is_multilabel(args.dataset):
        _need(args, "root")
        text, label, fields = workflow.train_multilabel(
            projector, _backbone(args), dataset=args.dataset, root=args.root, split=args.split,
            image_size=args.image_size, store_dir=args.feature_store, batch_size=args.batch_size,
            recompute=args.recompute, progress=not args.no_progress)
    else:
        split, text, label, fields = _single_label_source(args)
        fields.update(workflow.train_single_label(projector, split.support, text, shots=args.shots, val=split.val,
                                                  test=split.test, select_on_val=args.select_on_val))
    return workflow.save_trained(projector, text, label=label, output=args.output, provenance=_provenance(args),
                                 fields=fields)


def cmd_mlr(args) -> dict:
    from ssp.unmix import workflow

    _need(args, "dataset", "root")
    workflow.check_multilabel(args.dataset, "mlr")  # before loading a backbone
    return workflow.mlr(_backbone(args), dataset=args.dataset, root=args.root, split=args.split,
                        image_size=args.image_size, store_dir=args.feature_store, batch_size=args.batch_size,
                        output=args.output, provenance=_provenance(args), projector=args.projector,
                        device=args.device, recompute=args.recompute, progress=not args.no_progress)


def cmd_segment(args) -> dict:
    from ssp.unmix import workflow

    _need(args, "dataset", "root")
    workflow.check_multilabel(args.dataset, "segment")  # before loading a backbone
    if args.max_images is not None and args.max_images < 1:
        raise workflow.UsageError(f"--max-images must be >= 1, got {args.max_images}")
    workflow.get_segmentation_dataset(args.dataset, args.root, split=args.split)  # a wrong folder fails first
    return workflow.segment(_backbone(args), dataset=args.dataset, root=args.root, split=args.split,
                            output=args.output, provenance=_provenance(args), projector=args.projector,
                            device=args.device, backbone_name=args.backbone, background=args.background,
                            threshold=args.threshold, logit_scale=args.logit_scale, short_side=args.short_side,
                            crop=args.crop, stride=args.stride, max_images=args.max_images,
                            examples=args.examples, progress=not args.no_progress)


COMMANDS = {"analyze": cmd_analyze, "train": cmd_train, "mlr": cmd_mlr, "segment": cmd_segment}


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(levelname)s: %(message)s")
    try:
        result = COMMANDS[args.command](args)
    except ValueError as err:
        from ssp.unmix.workflow import UsageError

        if args.debug:
            raise
        if isinstance(err, UsageError):
            print(f"ssp-unmix {args.command}: error: {err}", file=sys.stderr)
            return 2
        return _error(args, err)
    except (FileNotFoundError, NotADirectoryError, RuntimeError, NotImplementedError, OSError) as err:
        if args.debug:
            raise
        return _error(args, err)
    print(f"record: {result['json']}")
    return 0


def _error(args, err: BaseException) -> int:
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    print(f"ssp-unmix {args.command}: error: {message} (run with --debug for the traceback)", file=sys.stderr)
    return 1


main = with_cli_messages(_main)

if __name__ == "__main__":
    sys.exit(main())

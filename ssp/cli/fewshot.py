"""``ssp-fewshot``: the few-shot protocol on one dataset, from images to a results table.

Examples::

    ssp-fewshot --dataset dtd --root DATA_ROOT --shots 1 2 4 8 16 --seeds 1 2 3 \\
        --backbone RN50 --pretrained openai --output runs/
    ssp-fewshot --features caches/stanford_cars --test-from-val 0.5 --output runs/   # a Tip-Adapter/APE cache
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ssp._checks import (
    PRECISIONS,
    ROUTINGS,
    SCORE_PRECISIONS,
    VAL_POLICIES,
    is_random_weights,
)
from ssp.cli._args import fail, int_at_least, with_cli_messages
from ssp.cli._args import random_weights_banner as _random_weights_banner
from ssp.methods.registry import canonical_name, method_help, registered_methods
from ssp.run.config import builtin_config_names, load_config
from ssp.run.protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol, protocol_names

# The run stage's sources, loop and records (torch, open_clip) and the report are imported inside
# _main, after parsing: `ssp-fewshot --help` stays fast.


def _rank_rule(text: str):
    """``none`` -> numerical rank, ``0.95`` -> energy fraction, ``400`` -> cap."""
    if text.lower() in ("none", "null", "full"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rank rule {text!r}: use none, an integer cap, or a fraction in (0, 1)")
    if 0 < value < 1:
        return value
    if value >= 1 and value.is_integer():
        return int(value)
    raise argparse.ArgumentTypeError(f"rank rule {text!r}: use none, an integer cap, or a fraction in (0, 1)")


def _method_name(text: str) -> str:
    """A method name or alias (``lpp+ssp``) -> its canonical name (``lp+++ssp``). A name the
    table does not know yet is kept: the config's ``method_modules`` may register it, and the
    config check refuses it otherwise (listing the choices)."""
    try:
        return canonical_name(text)
    except ValueError:
        return text


_positive_int = int_at_least(1)
_non_negative_int = int_at_least(0)
_workers = int_at_least(0, " (0 = load in the main process)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), e.g. 0.5, got {text!r}")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), e.g. 0.5, got {text}")
    return value


def _unique(values, flag: str, prog: str) -> list | None:
    """``values`` without repeats (first occurrence kept); a repeat is reported once."""
    if values is None:
        return None
    out = list(dict.fromkeys(values))
    if len(out) != len(values):
        print(f"{prog}: note: {flag} {' '.join(map(str, values))} has repeats; using {' '.join(map(str, out))}",
              file=sys.stderr)
    return out


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``ssp-fewshot`` and ``ssp-reproduce`` (protocol, methods, sources, extraction)."""
    p.add_argument("--config", help="a YAML file applied on top of the shipped dataset config")
    p.add_argument("--shots", type=_positive_int, nargs="+", help="shot counts, e.g. 1 2 4 8 16")
    p.add_argument("--seeds", type=_non_negative_int, nargs="+", help="few-shot draws, e.g. 1 2 3")
    p.add_argument("--methods", nargs="+", type=_method_name, metavar="METHOD",
                   help=f"methods to run (default: the config's list); choose from {', '.join(method_help())}, "
                        "or a method of a module the config's method_modules names")
    p.add_argument("--pretrained", help="open_clip tag (openai, ...), a local checkpoint file, or 'none' "
                                        "(random weights: smoke tests only, accuracies are meaningless)")
    p.add_argument("--precision", choices=PRECISIONS, help="backbone precision")
    p.add_argument("--quick-gelu", choices=["auto", "on", "off"],
                   help="QuickGELU activations: auto (default) decides from the weights (OpenAI weights need it)")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--views", type=_positive_int, help="augmented views averaged into each support feature (default 10)")
    p.add_argument("--val-policy", help="coop (min(K,4) per class), full, or an integer per class")
    p.add_argument("--ssp-rank", type=_rank_rule, nargs="+", metavar="RULE",
                   help="SSP rank rules searched on validation: none (numerical rank), an int cap, a fraction")
    p.add_argument("--score-precision", choices=SCORE_PRECISIONS,
                   help="SSP language-view scoring: auto (default: times float32 and the screens the device "
                        "runs natively on the support features at fit and keeps the fastest; never an emulated "
                        "screen), float32, or a bfloat16 / tfloat32 screen (exact: an error bound, and float64 "
                        "re-scoring of the classes it cannot rule out); the run JSON records what ran")
    p.add_argument("--ssp-routing", nargs="+", choices=ROUTINGS,
                   help="SSP routings searched on validation")
    p.add_argument("--prompts", metavar="SET",
                   help="the sentences of the text classifier (images only): dataset (its templates, default), "
                        "single ('a photo of a {}.'), clip-ensemble (CLIP's published templates for the dataset), "
                        "a JSON file of per-class sentences (CuPL format), or NAME+FILE.json (both)")
    p.add_argument("--batch-size", type=_positive_int, help="feature-extraction batch size")
    p.add_argument("--num-workers", type=_workers, help="data-loader workers")
    p.add_argument("--test-from-val", type=_fraction, metavar="FRACTION",
                   help="Tip-Adapter cache folders without test features: a seeded per-class split of the validation "
                        "features, FRACTION of them becoming the test part (e.g. 0.5)")
    p.add_argument("--conformal-alpha", type=_fraction, metavar="ALPHA",
                   help="split conformal prediction sets (calibrated on validation) target 1 - ALPHA coverage "
                        "(default 0.1: 90%%)")
    p.add_argument("--text-layout", choices=["auto", "CD", "DC"], default="auto",
                   help="orientation of --text-features: auto (from C and D), CD = [classes, dim], DC = [dim, classes]")
    p.add_argument("--feature-store", metavar="DIR", default=None,
                   help="feature store folder: extracted features, reused across runs (default $SSP_FEATURE_STORE, else ~/.cache/ssp)")
    p.add_argument("--recompute", action="store_true", help="ignore cached features and extract again")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable (corrupt, truncated, missing) images out instead of stopping; they are "
                        "listed in the log and in each run JSON (skipped_images); a support shot left out is "
                        "replaced by another training image of its class (seeded, recorded in replaced_shots)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


#: Flags of images only (backbone weights, extraction): a Tip-Adapter cache folder holds features
#: already extracted, so they are refused with one rather than silently ignored.
IMAGE_ONLY_FLAGS = {"pretrained": "--pretrained", "precision": "--precision", "quick_gelu": "--quick-gelu",
                    "views": "--views", "batch_size": "--batch-size", "num_workers": "--num-workers",
                    "feature_store": "--feature-store", "recompute": "--recompute",
                    "skip_bad_images": "--skip-bad-images"}


def refuse_image_flags(args: argparse.Namespace, prog: str, source_flag: str) -> None:
    """Exit naming the image-only flags given with a Tip-Adapter cache source (``source_flag``)."""
    given = [flag for dest, flag in IMAGE_ONLY_FLAGS.items()
             if getattr(args, dest, None) is not None and getattr(args, dest) is not False]
    if given:
        one = len(given) == 1
        raise SystemExit(f"{prog}: error: {' '.join(given)} appl{'ies' if one else 'y'} to images (--root); "
                         f"{source_flag} reads features already extracted, so {'it' if one else 'they'} would "
                         f"change nothing: drop {'it' if one else 'them'}")


def note_ignored_config_keys(config_file: str | None, prog: str) -> None:
    """Say which keys of the user's config file apply to images only (ignored with a Tip-Adapter
    cache folder, and left out of the run JSONs' ``config``)."""
    if not config_file:
        return
    import yaml

    try:
        given = yaml.safe_load(Path(config_file).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # load_config has read it already; nothing more to say
    from ssp.run.cache_source import IMAGE_ONLY_KEYS

    ignored = [k for k in IMAGE_ONLY_KEYS if isinstance(given, dict) and k in given]
    if ignored:
        print(f"{prog}: note: {', '.join(ignored)} of {config_file} appl{'ies' if len(ignored) == 1 else 'y'} to "
              "images only: ignored with a Tip-Adapter cache folder (and not recorded in the run JSONs)",
              file=sys.stderr)


def config_overrides(args: argparse.Namespace, prog: str) -> dict:
    """The command-line values that override the YAML configs (``None`` = not given)."""
    return {"shots": _unique(args.shots, "--shots", prog), "seeds": _unique(args.seeds, "--seeds", prog),
            "methods": _unique(args.methods, "--methods", prog), "backbone": getattr(args, "backbone", None),
            "pretrained": args.pretrained, "precision": args.precision,
            "quick_gelu": {None: None, "on": True, "off": False}.get(args.quick_gelu), "views": args.views,
            "val_policy": _val_policy(args.val_policy, prog), "batch_size": args.batch_size,
            "num_workers": args.num_workers, "skip_bad_images": True if args.skip_bad_images else None,
            "prompts": args.prompts,
            "metrics": {"conformal_alpha": args.conformal_alpha} if args.conformal_alpha is not None else None,
            "ssp": {k: v for k, v in (("rank", args.ssp_rank), ("routing", args.ssp_routing),
                                      ("score_precision", args.score_precision)) if v}}


def random_weights_banner(cfg: dict, show: bool = True):
    """With ``pretrained: none``, one banner when the backbone loads (:func:`ssp.cli._args.random_weights_banner`)."""
    return _random_weights_banner(is_random_weights(cfg.get("pretrained")), what="Accuracies", show=show)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssp-fewshot",
        description=f"Few-shot CLIP ({', '.join(s.title for s in registered_methods())}; each with and "
                    "without SSP) under the CoOp protocol: hyper-parameters chosen on validation, test scored once, "
                    "mean ± std over seeds. Values default to configs/defaults.yaml and configs/<dataset>.yaml. "
                    "Multi-process feature extraction: torchrun --nproc_per_node N -m ssp.cli.fewshot ... (gloo on CPU, "
                    "NCCL with one GPU per process; rank 0 runs the methods and writes every file).")
    p.add_argument("--dataset", help="dataset name (see --list-datasets); with --features, inferred from "
                                     "the folder name when it is a benchmark's")
    p.add_argument("--root",
                   help="folder holding the dataset folder directly or in its coop/ subfolder (or the dataset "
                        "folder itself); default $SSP_DATA_ROOT")
    p.add_argument("--features", metavar="DIR",
                   help="run on a Tip-Adapter cache folder (keys_<K>shots.pt, values_<K>shots.pt, val_f.pt, ...) "
                        "instead of images: no backbone is loaded")
    p.add_argument("--text-features", metavar="FILE",
                   help="text classifier for --features caches without one: [C, D] or [D, C], .pt/.npy/.safetensors")
    p.add_argument("--prompt-features", metavar="FILE",
                   help="per-prompt text features for --features caches, [C, P, D] (.pt/.npy/.safetensors): the "
                        "prompts TIMO weighs (from images, --prompts gives them)")
    p.add_argument("--split-file", help="read the split JSON from this file instead of the dataset folder")
    p.add_argument("--split-manifest", metavar="FILE",
                   help="use the exact support / validation images of a split manifest (from `ssp-data splits`, "
                        "or a run JSON) instead of drawing them; refused if it does not match the dataset on disk")
    p.add_argument("--backbone", help="open_clip model name (RN50, ViT-B-32, ...), hf-hub:org/repo, "
                                      "or a model-config JSON; with --features, a label for the cache's backbone")
    p.add_argument("--protocol", choices=protocol_names(), default=DEFAULT_PROTOCOL,
                   help="evaluation protocol: " + "; ".join(f"{n} = {PROTOCOLS[n].title}" for n in protocol_names())
                        + " (docs/protocol.md)")
    p.add_argument("--eval-on", nargs="+", metavar="TARGET",
                   help="distribution shift: after fitting and searching on --dataset, score each TARGET's test split "
                        "with the logits restricted to its classes (mapped by class id), e.g. imagenet_v2 "
                        "imagenet_sketch imagenet_a imagenet_r (read under --root), or NAME=DIR for a folder elsewhere")
    add_common_arguments(p)
    p.add_argument("--output", default="runs", help="results folder (one JSON per run, results.md, results.png)")
    p.add_argument("--rerun", action="store_true",
                   help="run again the runs whose JSON already exists under --output with the same settings "
                        "(default: reuse them, so an interrupted command resumes where it stopped)")
    p.add_argument("--list-datasets", action="store_true", help="print the known datasets and exit")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results.md / results.png / summary.json from the JSONs in --output and exit")
    return p


class _Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) turned into an exception, so that clean-up code runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise _Interrupted(signum)


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGINT and SIGTERM raise :class:`_Interrupted` inside the block (previous handlers restored after).

    Python drops an exception raised where it cannot propagate (an ``os.fork`` hook, e.g. when
    DataLoader workers start, or a ``__del__``) and only reports it to ``sys.unraisablehook``;
    such an interrupt is delivered again a moment later instead of being lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_hook = sys.unraisablehook

    def redeliver(unraisable) -> None:
        if isinstance(unraisable.exc_value, _Interrupted):
            threading.Timer(0.01, os.kill, args=(os.getpid(), unraisable.exc_value.signum)).start()
        else:
            previous_hook(unraisable)

    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    sys.unraisablehook = redeliver
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook


def _val_policy(text: str | None, prog: str = "ssp-fewshot"):
    if text is None or text in VAL_POLICIES:
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SystemExit(f"{prog}: error: --val-policy must be coop, full or a positive integer, got {text!r}")
    return value


def _main(argv: list[str] | None = None) -> int:
    prog = "ssp-fewshot"
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(levelname)s: %(message)s")
    logging.getLogger("ssp").setLevel(logging.INFO)
    if args.list_datasets:
        from ssp.data import list_datasets

        print("\n".join(list_datasets()))
        return 0
    if args.report_only:
        from ssp.report.tables import write_report
        from ssp.run.records import RUN_SUFFIX, find_runs

        out = Path(args.output)
        if not find_runs(out):
            raise SystemExit(f"{prog}: error: --report-only: no run results (*{RUN_SUFFIX}) under {out}; "
                             "point --output at a folder written by ssp-fewshot or ssp-reproduce")
        try:
            table, paths = write_report(out)
        except (ValueError, OSError) as err:
            raise fail(prog, err, args.debug)
        print(table)
        print(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
        return 0
    if args.eval_on and args.protocol != DEFAULT_PROTOCOL:
        raise SystemExit(f"{prog}: error: --eval-on scores the model fitted on every class of --dataset (protocol "
                         f"fewshot); it does not combine with --protocol {args.protocol}")
    if args.eval_on and args.features:
        raise SystemExit(f"{prog}: error: --eval-on reads the targets' images through the backbone; it needs --root "
                         "(images), not --features (a Tip-Adapter cache folder)")
    if args.features:
        from ssp.run.cache_source import cache_dataset_name

        refuse_image_flags(args, prog, "--features")
        if args.split_manifest:
            raise SystemExit(f"{prog}: error: --split-manifest applies to images (--root); a Tip-Adapter cache "
                             "folder holds its own support draw (keys_<K>shots.pt)")
        if args.root or args.split_file:
            flag = "--root" if args.root else "--split-file"
            raise SystemExit(f"{prog}: error: {flag} and --features name two different sources of features; "
                             f"give --features DIR (a Tip-Adapter cache folder) or {flag} (images), not both")
        if not Path(args.features).expanduser().is_dir():
            raise SystemExit(f"{prog}: error: --features {args.features}: no such folder (a Tip-Adapter cache "
                             "folder holding keys_<K>shots.pt, values_<K>shots.pt, val_f.pt, ...)")
        if not args.dataset:
            args.dataset = cache_dataset_name(args.features)
            if not args.dataset:
                raise SystemExit(f"{prog}: error: cannot tell the dataset of --features {args.features} from its "
                                 f"folder name; pass --dataset (configs ship for: {', '.join(builtin_config_names())})")
    elif args.text_features or args.prompt_features or args.test_from_val is not None:
        flag = ("--text-features" if args.text_features else
                "--prompt-features" if args.prompt_features else "--test-from-val")
        raise SystemExit(f"{prog}: error: {flag} applies to Tip-Adapter cache folders; add --features DIR")
    else:
        args.root = args.root or os.environ.get("SSP_DATA_ROOT")
    if not args.dataset:
        raise SystemExit(f"{prog}: error: --dataset is required (configs ship for: {', '.join(builtin_config_names())})")
    if not args.features and not args.root:
        raise SystemExit(f"{prog}: error: --root is required (or set $SSP_DATA_ROOT): the folder that holds the "
                         "dataset folder (directly or in coop/); fetch one with `ssp-data download dtd --root DATA`, "
                         "see datasets/README.md for the layouts; or --features DIR for a Tip-Adapter cache folder")
    overrides = config_overrides(args, prog)
    if args.features:
        overrides["backbone"] = None  # a label only: the cache's backbone is not loaded
    try:
        cfg = load_config(args.dataset, args.config, overrides)
        cfg = get_protocol(args.protocol).configure(cfg, shots_given=args.shots is not None,
                                                    methods_given=args.methods is not None)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"{prog}: error: {err}")
    if args.features:
        note_ignored_config_keys(args.config, prog)
    from ssp.data import ImageLoadError
    from ssp.run.pipeline import Interrupted, run_fewshot
    from ssp.run.records import check_writable
    from ssp.run.sources import make_source

    main_rank = True
    try:
        check_writable(args.output)
        with _signals_as_interrupts():
            if args.features:
                source = make_source(cfg, features=args.features, test_from_val=args.test_from_val,
                                     text_features=args.text_features, text_layout=args.text_layout,
                                     backbone_name=args.backbone, device=args.device,
                                     prompt_features=args.prompt_features)
                records = run_fewshot(cfg, source, output_dir=args.output, resume=not args.rerun,
                                      progress=not args.no_progress, protocol=args.protocol)
            else:
                from ssp import distributed

                manifest = None
                if args.split_manifest:
                    from ssp.data.manifest import load_manifest

                    manifest = load_manifest(args.split_manifest)
                device = distributed.init_from_env(args.device) or args.device  # torchrun: one process group
                main_rank = distributed.is_main()
                try:
                    with random_weights_banner(cfg, show=main_rank):
                        source = make_source(cfg, root=args.root, store_dir=args.feature_store, device=str(device),
                                             recompute=args.recompute, split_file=args.split_file,
                                             progress=not args.no_progress, split_manifest=manifest,
                                             eval_on=_unique(args.eval_on, "--eval-on", prog))
                        records = run_fewshot(cfg, source, output_dir=args.output, resume=not args.rerun,
                                              progress=not args.no_progress, protocol=args.protocol,
                                              echo=print if main_rank else (lambda _: None))
                finally:
                    distributed.shutdown()
    except Interrupted as err:
        if args.debug:
            raise
        signum = err.signum or signal.SIGINT
        print(f"\n{prog}: interrupted ({signal.Signals(signum).name}); {err.completed} run(s) finished in this "
              f"call and saved under {args.output}; rerun the same command to resume (finished runs are reused)",
              file=sys.stderr)
        raise SystemExit(128 + int(signum))
    except KeyboardInterrupt as err:  # before the run loop started
        if args.debug:
            raise
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"\n{prog}: interrupted ({signal.Signals(signum).name}) before any run finished",
              file=sys.stderr)
        raise SystemExit(128 + int(signum))
    except ImageLoadError as err:
        if args.debug:
            raise
        raise SystemExit(f"{prog}: error: cannot read image {err.path} ({err.reason}); replace or delete it, "
                         "or rerun with --skip-bad-images to go on without it" if main_rank else 1)
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError, RuntimeError) as err:
        raise fail(prog, err, args.debug)
    if not main_rank:
        return 0
    from ssp.report.tables import write_report

    try:
        table, written = write_report(args.output)
    except (ValueError, OSError) as err:
        raise fail(prog, err, args.debug)
    print()
    print(table)
    plots = sorted(Path(path).name for key, path in written.items() if key.startswith("plot"))
    print(f"\n{len(records)} runs under {args.output} ({', '.join(['results.md', *plots, 'summary.json'])})")
    return 0


main = with_cli_messages(_main)

if __name__ == "__main__":
    sys.exit(main())

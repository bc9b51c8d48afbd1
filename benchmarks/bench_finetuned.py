"""Fine-tuned adapters (Tip-Adapter-F, APE-T) against the training-free ones, and training cost.

Part 1, real CLIP ViT-B/32 StanfordCars features (Tip-Adapter cache in
``$SSP_DATA_ROOT/features/clip_vit_b32_tip_cache/stanford_cars``; default ``SSP_DATA_ROOT`` =
``../shared/data``). Only the validation split was published, so it is split in two halves with
a seeded permutation: epochs are selected and (β, α, γ) searched on the first half with the
shipped stanford_cars grids and training settings (``configs/stanford_cars.yaml``), and accuracy
is reported once on the held-out half. The cache holds averaged keys only, so the fine-tuned
models train on the keys. Times, in seconds: ``fit`` of the fine-tuned models (cache + training,
after a warm-up fit that absorbs one-time imports) and the grid search.

Part 2, ImageNet size (C = 1000, K = 16, D = 1024, 10 cached views, synthetic features, the
imagenet training settings): training time. ``--imagenet-epochs`` epochs are run and timed; the
20-epoch figure is that time scaled to 20 epochs when fewer are run (printed as such).

    python benchmarks/bench_finetuned.py [--shots 1 2 4 8 16] [--seed 1] [--threads 2]
        [--imagenet-epochs 20] [--skip-imagenet] [--device cpu] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ssp, not an installed one

import torch

from ssp.features.tip_cache import load_tip_adapter_cache
from ssp.methods.finetuned import APET, TipAdapterF
from ssp.methods.registry import get_method
from ssp.methods.search import validation_search
from ssp.methods.zero_shot import ZeroShotCLIP
from ssp.run.config import load_config

REPO = Path(__file__).resolve().parents[1]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def warm_up(device: str) -> None:
    """One tiny fit of each model, so one-time costs (torch's optimiser imports: seconds) are not
    charged to the first timed run."""
    gen = torch.Generator().manual_seed(0)
    text, keys = torch.randn(3, 8, generator=gen), torch.randn(6, 8, generator=gen)
    labels = torch.arange(3).repeat_interleave(2)
    for cls in (TipAdapterF, APET):
        cls(epochs=1, batch_size=4, device=device).fit(keys, labels, text_features=text,
                                                        val_features=keys, val_labels=labels)


def stanford_cars(args) -> list[dict]:
    folder = args.data_root / "features" / "clip_vit_b32_tip_cache" / "stanford_cars"
    if not folder.is_dir():
        print(f"{folder} not found; set SSP_DATA_ROOT (skipping the StanfordCars part)", file=sys.stderr)
        return []
    cfg = load_config("stanford_cars")
    tip_grid, ape_grid = get_method("tip-adapter").grid(cfg), get_method("ape").grid(cfg)
    dev = dict(device=args.device)
    rows = []
    for shots in args.shots:
        cache = load_tip_adapter_cache(folder, shots)
        n_val = cache.val_labels.shape[0]
        perm = torch.randperm(n_val, generator=torch.Generator().manual_seed(args.seed))
        sel, held = perm[: n_val // 2], perm[n_val // 2:]
        xs, ys = cache.val_features[sel], cache.val_labels[sel]
        xh, yh = cache.val_features[held], cache.val_labels[held]
        support, labels, text = cache.support_features, cache.support_labels, cache.text_features
        val = dict(val_features=xs, val_labels=ys)
        dim = cache.n_features  # channel counts of the RN50 configs are clamped to D (512 here)

        zero_shot = ZeroShotCLIP(**dev).fit(text_features=text)
        def build(name, **extra):  # the estimator the CLI would run, from the shipped config
            return get_method(name).build(cfg, n_features=dim, **dev, **extra)

        tip = build("tip-adapter").fit(support, labels, text_features=text)
        _, tip_search = timed(lambda: validation_search(tip, xs, ys, tip_grid))
        tip_f = build("tip-adapter-f")
        _, tip_f_train = timed(lambda: tip_f.fit(support, labels, text_features=text, **val))
        _, tip_f_search = timed(lambda: validation_search(tip_f, xs, ys, tip_grid))
        ape = build("ape", n_channels=min(cfg["ape"]["n_channels"], dim))
        ape.fit(support, labels, text_features=text)
        _, ape_search = timed(lambda: validation_search(ape, xs, ys, ape_grid))
        ape_t = build("ape-t", n_channels=min(cfg["ape_t"]["n_channels"], dim))
        _, ape_t_train = timed(lambda: ape_t.fit(support, labels, text_features=text, **val))
        _, ape_t_search = timed(lambda: validation_search(ape_t, xs, ys, ape_grid))
        row = {
            "shots": shots, "n_select": int(sel.numel()), "n_held_out": int(held.numel()),
            "zero_shot": 100 * zero_shot.score(xh, yh),
            "tip_adapter": 100 * tip.score(xh, yh), "tip_adapter_f": 100 * tip_f.score(xh, yh),
            "ape": 100 * ape.score(xh, yh), "ape_t": 100 * ape_t.score(xh, yh),
            "tip_search_s": tip_search, "tip_f_train_s": tip_f_train, "tip_f_search_s": tip_f_search,
            "ape_search_s": ape_search, "ape_t_train_s": ape_t_train, "ape_t_search_s": ape_t_search,
            "tip_f_best_epoch": tip_f.best_epoch_, "ape_t_best_epoch": ape_t.best_epoch_,
            "tip_f_params": {k: tip_f.get_params()[k] for k in ("beta", "alpha")},
            "ape_t_params": {k: ape_t.get_params()[k] for k in ("beta", "alpha", "gamma")},
            "training_inputs": tip_f.training_inputs_,
        }
        rows.append(row)
        print(f"{shots:>2} shots: zero-shot {row['zero_shot']:.2f} | Tip-Adapter {row['tip_adapter']:.2f}"
              f" -> -F {row['tip_adapter_f']:.2f} (train {tip_f_train:.1f} s, epoch {tip_f.best_epoch_})"
              f" | APE {row['ape']:.2f} -> -T {row['ape_t']:.2f} (train {ape_t_train:.1f} s,"
              f" epoch {ape_t.best_epoch_})", flush=True)
    return rows


def imagenet_size(args) -> dict:
    """Training time of both fine-tuned models on synthetic features of ImageNet's size."""
    n_classes, shots, dim, n_views, n_val = 1000, 16, 1024, 10, 4000
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(n_classes, dim, generator=gen)
    labels = torch.arange(n_classes).repeat_interleave(shots)
    support = text[labels] + 2.0 * torch.randn(labels.numel(), dim, generator=gen)
    views = support[None] + 0.5 * torch.randn(n_views, labels.numel(), dim, generator=gen)
    keys = views.mean(0)
    val_y = torch.randint(0, n_classes, (n_val,), generator=gen)
    val_x = text[val_y] + 2.0 * torch.randn(n_val, dim, generator=gen)
    cfg = load_config("imagenet")
    out = {"C": n_classes, "K": shots, "D": dim, "views": n_views, "n_val": n_val,
           "epochs_run": args.imagenet_epochs, "device": args.device}
    for name, method in (("tip_adapter_f", "tip-adapter-f"), ("ape_t", "ape-t")):
        target_epochs = 20
        model = get_method(method).build(cfg, n_features=dim, device=args.device, epochs=args.imagenet_epochs)
        model.fit(keys, labels, text_features=text, view_features=views,
                  val_features=val_x, val_labels=val_y)
        per_epoch = model.train_time_s_ / max(args.imagenet_epochs, 1)
        out[name] = {"train_s": model.train_time_s_, "per_epoch_s": per_epoch,
                     "steps_per_epoch": math.ceil(labels.numel() / model.batch_size),
                     "epochs_20_s": per_epoch * target_epochs,
                     "extrapolated": args.imagenet_epochs != target_epochs}
        print(f"ImageNet size, {name}: {model.train_time_s_:.1f} s for {args.imagenet_epochs} epoch(s)"
              f" ({per_epoch:.1f} s/epoch incl. validation) -> 20 epochs "
              f"{'~' if out[name]['extrapolated'] else ''}{per_epoch * target_epochs:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from ssp._utils.warn import one_line_warnings

    one_line_warnings()  # the message, not Python's file:line and source line
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("SSP_DATA_ROOT", REPO.parent / "shared" / "data")))
    parser.add_argument("--shots", type=int, nargs="*", default=[1, 2, 4, 8, 16],
                        help="StanfordCars shot counts; none: skip that part")
    parser.add_argument("--seed", type=int, default=1, help="seed of the validation half split")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--imagenet-epochs", type=int, default=1,
                        help="epochs run at ImageNet size (the 20-epoch time is scaled from them)")
    parser.add_argument("--skip-imagenet", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.imagenet_epochs < 1:
        parser.error(f"--imagenet-epochs must be >= 1, got {args.imagenet_epochs}")

    warm_up(args.device)
    rows = stanford_cars(args) if args.shots else []
    if rows:
        print(f"\nStanfordCars, ViT-B/32, held-out half (split seed {args.seed}), top-1 %; "
              "train / search seconds; torch threads", torch.get_num_threads())
        print("| shots | zero-shot | Tip-Adapter | Tip-Adapter-F | APE | APE-T "
              "| Tip search s | Tip-F train / search s | APE search s | APE-T train / search s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['shots']} | {r['zero_shot']:.2f} | {r['tip_adapter']:.2f} | {r['tip_adapter_f']:.2f} "
                  f"| {r['ape']:.2f} | {r['ape_t']:.2f} | {r['tip_search_s']:.1f} "
                  f"| {r['tip_f_train_s']:.1f} / {r['tip_f_search_s']:.1f} | {r['ape_search_s']:.1f} "
                  f"| {r['ape_t_train_s']:.1f} / {r['ape_t_search_s']:.1f} |")
    imagenet = None if args.skip_imagenet else imagenet_size(args)
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "threads": torch.get_num_threads(),
                                         "stanford_cars": rows, "imagenet_size": imagenet}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

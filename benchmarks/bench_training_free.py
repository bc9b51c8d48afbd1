"""GDA and ProKeR at ImageNet size on CPU: fit, the full default search, predict; time and peak memory.

Synthetic CLIP-like data (unit vectors: class centres near their text embedding, samples spread
around them): C = 1000 classes, K = 16 shots, D = 1024 (RN50), E = 10 augmented views per support
image for GDA (its samples, N = E·C·K = 160,000), the per-image features for ProKeR (N = C·K =
16,000), 4 validation images per class (CoOp's val policy) and ``--n-test`` test queries.
Each method runs in its own process, so the peak resident memory (``ru_maxrss``) is its own.

    python benchmarks/bench_training_free.py [--classes 1000] [--shots 16] [--dim 1024] [--views 10]
                                             [--n-test 10000] [--threads N] [--only gda|proker] [--beta 4]
                                             [--search-solver auto eigh cholesky] [--json out.json]

``--search-solver`` runs ProKeR once per solver named (each in its own process), side by side.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ssp, not an installed one

import torch


def make_data(n_classes: int, shots: int, dim: int, views: int, n_val_per_class: int, n_test: int,
              seed: int = 0) -> dict:
    """Unit-norm float32 features: text ``[C, D]``, view features ``[E, N, D]``, their normalised
    mean ``[N, D]``, labels, validation and test queries."""
    g = torch.Generator().manual_seed(seed)

    def unit(x):
        return x / x.norm(dim=-1, keepdim=True)

    text = unit(torch.randn(n_classes, dim, generator=g))
    centres = unit(text + 0.9 * unit(torch.randn(n_classes, dim, generator=g)))
    labels = torch.arange(n_classes).repeat_interleave(shots)
    images = centres[labels] + 0.8 * unit(torch.randn(len(labels), dim, generator=g))
    view_features = torch.empty(views, len(labels), dim)
    for e in range(views):
        view_features[e] = unit(images + 0.3 * unit(torch.randn(len(labels), dim, generator=g)))
    val_labels = torch.arange(n_classes).repeat_interleave(n_val_per_class)
    test_labels = torch.randint(0, n_classes, (n_test,), generator=g)

    def queries(lab):
        return unit(centres[lab] + 0.8 * unit(torch.randn(len(lab), dim, generator=g)))

    return dict(text=text, views=view_features, support=unit(view_features.mean(0)), labels=labels,
                val=queries(val_labels), val_labels=val_labels, test=queries(test_labels),
                test_labels=test_labels)


def grid_lams() -> list[float]:
    """ProKeR's default λ axis."""
    from ssp.methods.registry import get_method

    return list(get_method("proker").grid(None)["lam"])


def run_one(method: str, args) -> dict:
    import warnings

    from ssp.methods.registry import get_method
    from ssp.methods.search import validation_search

    d = make_data(args.classes, args.shots, args.dim, args.views, 4, args.n_test)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = get_method(method).estimator(device="cpu")  # constructor defaults
    if method == "proker":
        model.set_params(search_solver=args.search_solver[0])
    fit_kw = {"view_features": d["views"]} if method == "gda" else {}
    t0 = time.perf_counter()
    model.fit(d["support"], d["labels"], text_features=d["text"], **fit_kw)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grid = None  # the registered default grid
        if method == "proker" and args.beta:  # the same lam axis, only these betas
            grid = {"beta": args.beta, "lam": grid_lams()}
        result = validation_search(model, d["val"], d["val_labels"], grid)
    search_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    accuracy = 100 * model.score(d["test"], d["test_labels"])
    predict_s = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grid_points = int(result.scores_.size)
    if method == "proker":
        from ssp.methods.proker import search_solver_for

        used = search_solver_for(args.search_solver[0], n_samples=len(d["labels"]), n_classes=args.classes,
                                 n_queries=len(d["val_labels"]), dim=args.dim, n_lams=len(grid_lams()))
        method = f"proker (auto: {used})" if args.search_solver[0] == "auto" else f"proker ({used})"
    return {"method": method,
            "n_samples": int(getattr(model, "n_samples_", len(d["labels"]))),
            "grid_points": grid_points, "best_params": result.best_params_,
            "val_accuracy": result.best_accuracy_pct_, "test_accuracy": accuracy, "fit_s": fit_s,
            "search_s": search_s, "predict_s": predict_s, "n_test": args.n_test,
            "peak_rss_gib": peak_kib / 2 ** 20, "data_rss_gib": base_rss / 2 ** 20,
            "warnings": [str(w.message) for w in caught]}


def main(argv: list[str] | None = None) -> int:
    from ssp._utils.warn import one_line_warnings

    one_line_warnings()  # the message, not Python's file:line and source line
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--methods", nargs="+", choices=("gda", "proker"), default=["gda", "proker"])
    parser.add_argument("--only", choices=("gda", "proker"), default=None,
                        help="run one method in this process and print its JSON row (what the driver calls)")
    parser.add_argument("--search-solver", nargs="+", default=["auto"], choices=("auto", "eigh", "cholesky"),
                        help="ProKeR's search solver(s); several: one ProKeR row each")
    parser.add_argument("--beta", type=float, nargs="+", default=None,
                        help="ProKeR: search only these betas (with the default lam axis)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(run_one(args.only, args)), flush=True)
        return 0
    rows = []
    jobs = [("gda", "auto")] if "gda" in args.methods else []
    jobs += [("proker", solver) for solver in args.search_solver if "proker" in args.methods]
    for method, solver in jobs:
        cmd = [sys.executable, __file__, "--only", method, "--search-solver", solver] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k not in ("only", "beta", "search_solver", "methods", "json") and v is not None]
        cmd += ["--beta", *map(str, args.beta)] if args.beta else []
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout  # stderr shown
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['method']}: fit {row['fit_s']:.1f} s, default search {row['search_s']:.1f} s "
              f"({row['grid_points']} points), predict {row['predict_s']:.1f} s ({row['n_test']} queries), "
              f"peak RSS {row['peak_rss_gib']:.2f} GiB (data alone {row['data_rss_gib']:.2f} GiB); "
              f"chosen {row['best_params']}", flush=True)
    print(f"\nC={args.classes}, K={args.shots}, D={args.dim}, views={args.views} (GDA), "
          f"torch threads={torch.get_num_threads()}")
    print("| method | N (samples) | fit s | default search s (points) | predict s | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['n_samples']} | {r['fit_s']:.1f} | {r['search_s']:.1f} ({r['grid_points']}) "
              f"| {r['predict_s']:.1f} | {r['peak_rss_gib']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"classes": args.classes, "shots": args.shots, "dim": args.dim,
                                               "views": args.views, "n_test": args.n_test, "rows": rows},
                                              indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

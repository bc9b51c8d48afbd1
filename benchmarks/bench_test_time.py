"""Test-time methods (TDA, DMN-ZS): time and peak memory of one stream.

Synthetic features (text rows at cosine ~0.9 from each other, queries around their class's row;
about two thirds of the queries fall in TDA's negative entropy band, so the caches fill, swap
entries and use the negative cache; the accuracies are not the point), streamed once:

* StanfordCars size: 818 queries x 196 classes x D 512 (the shared cache's test half is 783);
* ImageNet size: ``--imagenet-queries`` (default 10,000 of the 50,000) x 1000 classes x D 1024.

Times are wall-clock seconds of ``stream`` (zero-shot logits, the memory replay and the read-out),
after a warm-up stream; the peak is the process's resident-memory high-water mark.

    python benchmarks/bench_test_time.py [--threads 2] [--imagenet-queries 10000] [--skip-imagenet]
        [--device cpu] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ssp, not an installed one

import torch

from ssp.methods import TDA, DMNZeroShot


def _stream(n_queries: int, n_classes: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(dim, generator=gen)
    text = torch.nn.functional.normalize(common + 0.3 * torch.randn(n_classes, dim, generator=gen), dim=1)
    labels = torch.randint(0, n_classes, (n_queries,), generator=gen)
    queries = torch.nn.functional.normalize(text[labels] + 0.03 * torch.randn(n_queries, dim, generator=gen), dim=1)
    return text, queries, labels


def run(n_queries: int, n_classes: int, dim: int, device: str) -> list[dict]:
    text, queries, labels = _stream(n_queries, n_classes, dim)
    text, queries = text.to(device), queries.to(device)
    zero_shot = float(((queries @ text.T).argmax(1).cpu() == labels).double().mean() * 100)
    rows = []
    for model in (TDA(device=device), DMNZeroShot(device=device)):
        model.fit(text_features=text)
        model.stream(queries[: min(64, n_queries)])  # warm-up
        t0 = time.perf_counter()
        logits, summary = model.stream(queries)
        seconds = time.perf_counter() - t0
        accuracy = float((logits.argmax(1).cpu() == labels).double().mean() * 100)
        rows.append({"method": type(model).__name__, "queries": n_queries, "classes": n_classes, "dim": dim,
                     "seconds": round(seconds, 3), "accuracy": round(accuracy, 2),
                     "zero_shot_accuracy": round(zero_shot, 2), "memory": summary,
                     "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
        print(f"{rows[-1]['method']:<12} {n_queries:>6} x {n_classes:>4} x {dim:>4}: {seconds:7.2f} s  "
              f"acc {accuracy:6.2f} (zero-shot {zero_shot:6.2f})  peak RSS {rows[-1]['peak_rss_mib']} MiB")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--imagenet-queries", type=int, default=10_000)
    p.add_argument("--skip-imagenet", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(818, 196, 512, args.device)
    if not args.skip_imagenet:
        rows += run(args.imagenet_queries, 1000, 1024, args.device)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

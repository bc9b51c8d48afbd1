"""Reliability metrics of one run (ssp.metrics.reliability): time and peak memory at ImageNet size.

Synthetic logits (informative, about 70 % top-1): ``--test`` test images (default 50,000, the
ImageNet test split) and ``--val`` validation images (default 4,000: CoOp's 4 per class) over
``--classes`` classes (default 1,000). Everything a run records is computed: ECE / MCE / NLL /
Brier raw and temperature-scaled (one temperature fitted on validation), AURC, accuracy at
coverage, LAC and randomised APS sets, the per-sample table and the per-class confusion matrix.

Each setting runs in its own process, so the peak resident memory is its own; side by side:

* ``blocks``: calibration and conformal sets in row blocks of
  ``ssp.metrics.calibration.BLOCK_ELEMENTS`` elements (the default, 32 MiB temporaries);
* ``one block``: the whole ``[M, C]`` array at once (as the code did before the blocks).

The input logits alone are ``M x C x 8`` bytes (400 MB at the defaults).

    python benchmarks/bench_reliability.py [--test 50000] [--val 4000] [--classes 1000] [--threads 2]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssp, not an installed one


def _logits(m: int, c: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, m)
    z = rng.standard_normal((m, c))
    z[np.arange(m), y] += 3.5
    return 4.0 * z, y


def child(args) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import ssp.metrics.calibration as calibration
    from ssp.metrics import per_class_results, reliability

    if args.one_block:
        calibration.BLOCK_ELEMENTS = 1 << 62
    z, y = _logits(args.test, args.classes, 0)
    zv, yv = _logits(args.val, args.classes, 1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    metrics, samples = reliability(z, y, zv, yv, alpha=0.1, seed=1)
    per_class_results(y, samples["prediction"], args.classes)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_gib": peak / 2**20, "added_gib": (peak - base) / 2**20,
            "accuracy": float(np.mean(z.argmax(1) == y) * 100),
            "lac": metrics["conformal"]["lac"]["coverage"], "aps": metrics["conformal"]["aps"]["coverage"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", type=int, default=50_000)
    p.add_argument("--val", type=int, default=4_000)
    p.add_argument("--classes", type=int, default=1_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--one-block", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(f"reliability metrics: {args.test:,} test + {args.val:,} validation images x {args.classes:,} classes, "
          f"{args.threads} thread(s); logits alone {args.test * args.classes * 8 / 2**30:.2f} GiB")
    print(f"{'rows':<10} {'time (s)':>9} {'peak RSS (GiB)':>15} {'added (GiB)':>12} {'LAC cov':>8} {'APS cov':>8}")
    common = [sys.executable, __file__, "--child", "--test", str(args.test), "--val", str(args.val),
              "--classes", str(args.classes), "--threads", str(args.threads)]
    rows = []
    for label, extra in (("blocks", []), ("one block", ["--one-block"])):
        done = subprocess.run(common + extra, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{label}: failed\n{done.stderr[-2000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"rows": label, **r})
        print(f"{label:<10} {r['seconds']:9.1f} {r['peak_gib']:15.2f} {r['added_gib']:12.2f} "
              f"{100 * r['lac']:7.2f}% {100 * r['aps']:7.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"test": args.test, "val": args.val, "classes": args.classes,
                                               "threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""How tight the screens' error bounds are: re-scored classes per query and exactness.

Fits SSPProjector (float32) on the benchmarks' synthetic data, scores queries in float64 (the
exact top-kappa, ties towards the lower index), then for each screen (TF32; bfloat16 with float32
output as on CUDA; bfloat16 with bfloat16 output as a native CPU bfloat16 GEMM) runs the exact
selection and prints the (query, class) pairs it re-scores per query, its bound next to the
screen's actual error, and whether every selection equals the float64 one. Device-independent
counts (the kernels are emulated exactly where they are not native), so a CPU can tell what a GPU
would re-score.

Usage::

    python benchmarks/bench_screens.py                 # ImageNet size, 200 queries (minutes on CPU)
    python benchmarks/bench_screens.py --quick
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_projector import SIZES, make_data  # noqa: E402

import ssp.methods.ssp.projector as P  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    sizes = dict(SIZES["quick" if args.quick else "full"]["imagenet"], n_queries=args.queries)
    data = make_data(**sizes)
    start = time.perf_counter()
    proj = P.SSPProjector(device=args.device, score_precision="float32").fit(
        data["patches"], data["labels"], image_features=data["images"], text_features=data["text"])
    print(f"{sizes}: fit {time.perf_counter() - start:.1f} s, language path {proj.language_path_}, "
          f"ranks {proj.class_ranks_.min()}..{proj.class_ranks_.max()}", flush=True)
    factors = proj._language_factors
    complement = proj.language_path_ == "complement"
    kappa = min(proj.class_top_k, factors.shape[0])
    x = P.l2_normalize(torch.as_tensor(data["queries"], device=factors.device))
    exact = torch.linalg.vector_norm(torch.einsum("cwd,td->tcw", factors.double(), x.double()), dim=2).square()
    want = torch.sort(-exact if complement else exact, dim=1, descending=True, stable=True).indices[:, :kappa]
    want = want.sort(1).values
    for name, native, out_unit in (("tfloat32", None, None), ("bfloat16", False, 0.0), ("bfloat16", True, 2.0**-8)):
        low = P._LowPrecisionScores.build(factors, P._SCREENS[name])
        if native is not None:
            low.native, low.out_unit = native, out_unit
        top, rescored, ties = P.select_classes(x, factors, low, kappa, complement)
        energy, x_round = low.energies(x)
        beta = low.energy_bound(energy, x_round.norm(dim=1), (x_round - x).norm(dim=1))
        err = (energy.double() - exact).abs()
        same = (top.sort(1).values == want).all(1).float().mean().item()
        label = name + ("" if out_unit is None else f" ({'bfloat16' if out_unit else 'float32'} output)")
        print(f"  {label:<28} re-scored {rescored / len(x):7.1f} of {factors.shape[0]} classes per query; "
              f"ties {ties}; selections equal to float64: {same:.0%}; bound median {beta.median():.2e} vs "
              f"actual error median {err.median():.2e} (max {err.max():.2e}); rho median {low.rho.median():.2e}",
              flush=True)


if __name__ == "__main__":
    main()

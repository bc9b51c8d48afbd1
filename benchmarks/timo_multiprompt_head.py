"""A constructed multi-prompt text head for TIMO on a Tip-Adapter cache folder: ``[C, P, D]``.

The real StanfordCars cache (``$SSP_DATA_ROOT/features/clip_vit_b32_tip_cache/stanford_cars``)
ships one text classifier (``text_weights.pt``, one vector per class), so TIMO's IGT has nothing
to weigh there. This script writes ``P`` random perturbations of each class's real text vector,
``t_{c,p} = norm(t_c + σ ‖t_c‖ g_{c,p} / √D)`` with ``g`` standard normal from
``numpy.random.default_rng(seed)`` (cosine to the real vector about ``1 / √(1 + σ²)``), and the
first prompt of each class optionally the real vector itself (``--keep-real``). They stand in for
the sentences of a prompt library (no CLIP text encoder exists on this machine), so the IGT
weights can be seen to differ across prompts; then::

    python benchmarks/timo_multiprompt_head.py --out /tmp/cars_prompts.pt
    ssp-fewshot --features $SSP_DATA_ROOT/features/clip_vit_b32_tip_cache/stanford_cars \\
        --test-from-val 0.5 --prompt-features /tmp/cars_prompts.pt --methods zero-shot gda timo timo-s

docs/baselines.md records what this gave.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ssp, not an installed one

import numpy as np
import torch

from ssp.features.tip_cache import load_tip_adapter_cache


def multi_prompt_head(text: np.ndarray, n_prompts: int, sigma: float, seed: int, keep_real: bool) -> np.ndarray:
    """``[C, P, D]`` unit prompts around the unit rows of ``text`` ``[C, D]`` (module docstring)."""
    rng = np.random.default_rng(seed)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    noise = rng.standard_normal((t.shape[0], n_prompts, t.shape[1])) / np.sqrt(t.shape[1])
    out = t[:, None, :] + sigma * noise
    if keep_real:
        out[:, 0] = t
    return out / np.linalg.norm(out, axis=2, keepdims=True)


def main(argv=None) -> None:
    root = Path(os.environ.get("SSP_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", default=str(root / "features" / "clip_vit_b32_tip_cache" / "stanford_cars"))
    p.add_argument("--out", required=True, help="the [C, P, D] file to write (.pt)")
    p.add_argument("--prompts", type=int, default=8, help="P, prompts per class")
    p.add_argument("--sigma", type=float, default=0.75, help="perturbation size σ")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-real", action="store_true", help="the first prompt of each class is the real vector")
    args = p.parse_args(argv)
    cache = load_tip_adapter_cache(args.features, 1)
    if cache.text_features is None:
        raise SystemExit(f"{args.features} has no text_weights*.pt")
    text = cache.text_features.double().numpy()
    head = multi_prompt_head(text, args.prompts, args.sigma, args.seed, args.keep_real)
    torch.save(torch.from_numpy(head).float(), args.out)
    cos = np.einsum("cpd,cd->cp", head, text / np.linalg.norm(text, axis=1, keepdims=True))
    print(f"wrote {args.out}: [C, P, D] = {list(head.shape)}, sigma {args.sigma}, seed {args.seed}; cosine to the "
          f"real head: mean {cos.mean():.3f}, min {cos.min():.3f}, max {cos.max():.3f}")


if __name__ == "__main__":
    main()

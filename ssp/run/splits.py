"""What one (shots, seed) of a run reads: the :class:`Split` a source gives the run loop, the
seeded validation / test split of caches without test features, and the test-only split of the
0-shot (test-time) protocol."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ssp.features.types import Features

__all__ = ["Split", "split_validation", "test_only_split"]

_STAGE_TEST_FROM_VAL = 2  # the stream of the test-from-val split (1 is validation's)


@dataclass
class Split:
    """The features of one (shots, seed) and what its run JSONs record about them."""

    support: Features
    val: Features
    test: Features | None     # None: a cache folder without test features, opened with require_test=False
    protocol: dict
    seeds: dict
    timings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)   # more top-level run-JSON fields (skipped_images, ...)
    #: distribution-shift targets: name -> (test features with target labels, [C_target] source class
    #: index of each target class); scored by the protocol with logits restricted to those classes
    targets: dict = field(default_factory=dict)


def split_validation(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split of validation indices into ``(search, test)``: for class ``c`` a
    permutation from ``numpy.random.default_rng([seed, 2, c])``; its first
    ``round(fraction * n_c)`` indices (at least one, and at most ``n_c - 1`` when ``n_c >= 2``) go
    to the test part. Both parts are sorted (file order)."""
    if not 0 < fraction < 1:
        raise ValueError(f"test_from_val must be a fraction in (0, 1), got {fraction}")
    y = labels.cpu().numpy()
    search, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        perm = idx[np.random.default_rng([int(seed), _STAGE_TEST_FROM_VAL, int(c)]).permutation(idx.size)]
        n_test = int(round(fraction * idx.size))
        n_test = min(max(n_test, 1), idx.size - 1) if idx.size >= 2 else 0
        test.extend(perm[:n_test].tolist())
        search.extend(perm[n_test:].tolist())
    return torch.tensor(sorted(search), dtype=torch.long), torch.tensor(sorted(test), dtype=torch.long)


def test_only_split(test: Features, n_classes: int, seed: int, extra: dict | None = None,
                    timings: dict | None = None) -> Split:
    """The split of a 0-shot (test-time) run: the test features only, empty support and validation."""
    empty = Features(test.image_features[:0], test.labels[:0])
    return Split(support=empty, val=empty, test=test, extra=dict(extra or {}), timings=dict(timings or {}),
                 protocol={"n_support": 0, "n_val": 0, "n_test": int(test.labels.numel()), "n_classes": n_classes,
                           "hyperparameters_chosen_on": "none: the methods' published defaults (no labels)"},
                 seeds={"few_shot_support": None, "validation_subsample": None, "test_stream": seed})

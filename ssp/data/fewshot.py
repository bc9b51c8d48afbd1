"""The few-shot protocol: K support images per class, a (sub-sampled) validation split, the test split.

Sampling scheme (reproducible across runs, machines and Python versions, and independent of the
order in which the split lists its samples):

* the candidates of class ``c`` are sorted by path;
* class ``c`` draws from its own stream ``numpy.random.default_rng([seed, shots, stage, c])``
  (``stage`` 0 = support, 1 = validation), so one class's draw never depends on another's;
* support: the first K entries of a permutation of the candidates. When a class has fewer than K
  candidates (a warning names it), permutations are concatenated until K are drawn, so every
  candidate is used and none more than ceil(K / n) times;
* validation: ``"coop"`` keeps min(K, 4) per class (CoOp), an int keeps that many, drawn without
  replacement (all of them when a class has fewer); ``"full"`` keeps the split as it is;
* without a validation split (ImageNet), validation is carved from the train images of each class
  that are not in the support set, with the same policy (``"full"`` = all remaining train images);
* test: the full test split, in file order.

Support and sub-sampled validation are class-major (label 0's samples, then label 1's, ...).
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from ssp._checks import VAL_POLICIES, check_int, option
from ssp.data.base import DatasetSplits, Sample

_STAGE_SUPPORT, _STAGE_VAL, _STAGE_REPLACE = 0, 1, 3  # 2: test-from-val of cache folders


@dataclass(repr=False)
class FewShotSplits:
    """One few-shot draw: ``support`` (exactly ``shots`` per class, class-major), ``val``, ``test``."""

    dataset: DatasetSplits
    shots: int
    seed: int
    support: list[Sample]
    val: list[Sample]
    test: list[Sample]
    val_policy: str | int

    @property
    def classnames(self) -> list[str]:
        return self.dataset.classnames

    @property
    def n_classes(self) -> int:
        return self.dataset.n_classes

    def __repr__(self) -> str:
        return (
            f"FewShotSplits(dataset={self.dataset.name!r}, shots={self.shots}, seed={self.seed}, "
            f"support={len(self.support)}, val={len(self.val)} ({self.val_policy!r}), "
            f"test={len(self.test)})"
        )


def _per_class(samples: Sequence[Sample], n_classes: int) -> list[list[Sample]]:
    """Samples grouped by label, each group sorted by path (order-independent candidates)."""
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        if not 0 <= s.label < n_classes:
            raise ValueError(f"sample {s.path} has label {s.label}, outside 0..{n_classes - 1}")
        groups[s.label].append(s)
    return [sorted(groups.get(c, []), key=lambda s: s.path) for c in range(n_classes)]


def _rng(seed: int, shots: int, stage: int, label: int) -> np.random.Generator:
    return np.random.default_rng([seed, shots, stage, label])


def _draw(candidates: list[Sample], k: int, rng: np.random.Generator) -> list[Sample]:
    """k of the candidates without replacement, cycling through fresh permutations if k > n."""
    n = len(candidates)
    order: list[int] = []
    while len(order) < k:
        order.extend(rng.permutation(n).tolist())
    return [candidates[i] for i in order[:k]]


def _val_count(policy: str | int, shots: int) -> int | None:
    """Samples per class kept by a policy; None = keep everything."""
    if policy == "coop":
        return min(shots, 4)
    if policy == "full":
        return None
    return int(policy)


def make_fewshot_splits(
    dataset: DatasetSplits, shots: int, seed: int, *, val_policy: str | int = "coop"
) -> FewShotSplits:
    """Draw the few-shot support set and the validation set of one (shots, seed) run.

    Args:
        dataset: the full splits from :func:`ssp.data.get_dataset`.
        shots: K >= 1 support images per class.
        seed: a non-negative integer (the protocol uses 1, 2, 3).
        val_policy: ``"coop"`` (min(K, 4) per class), ``"full"`` (the whole validation split), or
            an int (that many per class).

    Returns:
        FewShotSplits with ``support`` of length C*K, class-major; ``val`` disjoint from ``support``;
        ``test`` the dataset's full test split.
    """
    shots = check_int(shots, "shots")
    seed = check_int(seed, "seed", minimum=0)
    if isinstance(val_policy, str):
        if val_policy not in VAL_POLICIES:
            raise ValueError(f"val_policy must be one of {VAL_POLICIES} or a positive int, got {val_policy!r}")
    else:
        val_policy = check_int(val_policy, "val_policy")
    n_classes = dataset.n_classes
    names = dataset.classnames

    train_groups = _per_class(dataset.train, n_classes)
    support: list[Sample] = []
    for c, candidates in enumerate(train_groups):
        if not candidates:
            raise ValueError(
                f"class {c} ({names[c]!r}) of dataset {dataset.name!r} has no training images; "
                "a few-shot support set needs at least one per class"
            )
        if len(candidates) < shots:
            warnings.warn(
                f"class {c} ({names[c]!r}) of dataset {dataset.name!r} has only {len(candidates)} "
                f"training image(s) for {shots} shots; sampling with replacement",
                stacklevel=2,
            )
        support.extend(_draw(candidates, shots, _rng(seed, shots, _STAGE_SUPPORT, c)))

    per_class = _val_count(val_policy, shots)
    if dataset.val is not None and per_class is None:
        val = list(dataset.val)  # the whole validation split, in file order
    else:
        if dataset.val is not None:
            groups = _per_class(dataset.val, n_classes)
        else:
            # no validation split (ImageNet): carve it from train images that are not shots
            used = {s.path for s in support}
            groups = [[s for s in candidates if s.path not in used] for candidates in train_groups]
            if per_class is None:
                warnings.warn(
                    f"val_policy='full' on {dataset.name!r}, which has no validation split: validation "
                    "= every train image that is not a shot; this can be very large",
                    stacklevel=2,
                )
            empty = [names[c] for c, group in enumerate(groups) if not group]
            if len(empty) == n_classes:
                short = min(range(n_classes), key=lambda c: len(train_groups[c]))
                raise ValueError(
                    f"{dataset.name!r} has no validation split and {shots} shots use up every train image "
                    f"(e.g. class {short} ({names[short]!r}) has {len(train_groups[short])}), so none is left "
                    f"for validation: use {option('shots', '--shots')} below the smallest class's train "
                    "count, or give the dataset a validation split (a val/ folder for an image folder)"
                )
            if empty:
                warnings.warn(
                    f"{len(empty)} class(es) of {dataset.name!r} have no train images left for the "
                    f"carved validation set (e.g. {empty[:5]})",
                    stacklevel=2,
                )
        val = []
        for c, candidates in enumerate(groups):
            if per_class is None:
                val.extend(candidates)
            else:
                val.extend(_draw(candidates, min(per_class, len(candidates)), _rng(seed, shots, _STAGE_VAL, c)))
    return FewShotSplits(
        dataset=dataset, shots=shots, seed=seed, support=support, val=val,
        test=list(dataset.test), val_policy=val_policy,
    )


def validation_subsample(labels: Sequence[int], val_policy: str | int, shots: int, seed: int) -> list[int]:
    """Indices (sorted) of ``labels`` kept by ``val_policy`` for a (shots, seed) run: per class,
    the first ``min(count, n_c)`` of the class's members (in the given order) under the seeded
    permutation that :func:`make_fewshot_splits` uses for validation images; ``"full"`` keeps all.
    For features without paths (a Tip-Adapter cache folder's ``val_f.pt``)."""
    per_class = _val_count(val_policy, shots)
    if per_class is None:
        return list(range(len(labels)))
    members: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        members[int(y)].append(i)
    keep = []
    for c in sorted(members):
        keep.extend(_draw(members[c], min(per_class, len(members[c])), _rng(seed, shots, _STAGE_VAL, c)))
    return sorted(keep)


def replace_unreadable_shots(splits: FewShotSplits, bad: Sequence[str],
                             readable: Callable[[Sample], bool]) -> tuple[FewShotSplits, list[dict]]:
    """``splits`` with each support image in ``bad`` (paths of unreadable or missing files) replaced
    by another training image of its class, at the same place (class-major order kept).

    The candidates of class ``c`` are its training images not in the support set (nor in a
    validation set carved from train), sorted by path and permuted by their own seeded stream
    ``numpy.random.default_rng([seed, shots, 3, c])``; the first that ``readable`` accepts (and
    that is not in ``bad``) replaces the shot. A class that runs out of candidates keeps the
    shots it has; :func:`check_support_after_skips` refuses one left with none.
    Returns ``(new splits, [{"class", "classname", "replaced", "by"}, ...])``.
    """
    bad_set = set(bad)
    if not bad_set & {s.path for s in splits.support}:
        return splits, []
    carved = splits.dataset.val is None
    used = {s.path for s in splits.support} | ({s.path for s in splits.val} if carved else set())
    pools: dict[int, list[Sample]] = {}
    groups = _per_class(splits.dataset.train, splits.n_classes)
    support, replacements = [], []
    for s in splits.support:
        if s.path not in bad_set:
            support.append(s)
            continue
        c = s.label
        if c not in pools:
            candidates = [x for x in groups[c] if x.path not in used]
            order = _rng(splits.seed, splits.shots, _STAGE_REPLACE, c).permutation(len(candidates))
            pools[c] = [candidates[i] for i in order]
        while pools[c]:
            candidate = pools[c].pop(0)
            if candidate.path not in bad_set and readable(candidate):
                used.add(candidate.path)
                support.append(candidate)
                replacements.append({"class": c, "classname": splits.classnames[c], "replaced": s.path,
                                     "by": candidate.path})
                break
            bad_set.add(candidate.path)
        else:
            support.append(s)  # nothing readable left: the shot stays out (refused if the class has none)
    return replace(splits, support=support), replacements


def check_support_after_skips(support: Sequence[Sample], kept: Sequence[int] | None,
                              classnames: Sequence[str]) -> None:
    """Refuse a support set that lost every shot of a class to skipped unreadable images.

    ``support``: the drawn support samples; ``kept``: indices into ``support`` of the images
    that were encoded (``Features.kept`` after ``skip_bad_images``; ``None`` = all). A class
    whose every shot was skipped would silently have no cache entry; this raises one line
    naming the class, the skipped file(s) and the fix.
    """
    if kept is None:
        return
    kept_set = {int(i) for i in kept}
    left: dict[int, int] = defaultdict(int)
    skipped: dict[int, list[str]] = defaultdict(list)
    for i, s in enumerate(support):
        if i in kept_set:
            left[s.label] += 1
        elif s.path not in skipped[s.label]:
            skipped[s.label].append(s.path)
    lost = sorted(c for c in skipped if left[c] == 0)
    if lost:
        c = lost[0]
        more = f" (and {len(lost) - 1} more class(es))" if len(lost) > 1 else ""
        files = ", ".join(skipped[c][:3]) + (" ..." if len(skipped[c]) > 3 else "")
        raise ValueError(
            f"class {c} ({classnames[c]!r}) has no readable training image left{more}: its shot(s) {files} "
            f"could not be read, nor any other training image of the class; replace the unreadable image(s) "
            f"or drop {option('skip_bad_images=True', '--skip-bad-images')}"
        )

"""Split manifests: the exact few-shot support (and validation) sets, written down so they can be
published and rerun.

A manifest is JSON::

    {"format": "ssp-split-manifest/1", "dataset": "dtd", "n_classes": 47, "classnames": [...],
     "val_policy": "coop", "split_file_sha256": "..." | null,
     "draws": [{"shots": 1, "seed": 1, "support": [["images/banded/banded_0002.jpg", 0], ...],
                "support_sha256": "...", "val": [[path, label], ...] | null, "val_sha256": "..." | null},
               ...],
     "sha256": "..."}

Paths are relative to the dataset folder (``/`` separated), in the order of the draw (class-major).
``val`` is ``null`` when the policy keeps the whole validation split (``full``), which needs no list.
``support_sha256`` / ``val_sha256`` are the sha256 of the canonical JSON of the list; ``sha256``
that of the draws. :func:`make_manifest` builds one from :func:`ssp.data.make_fewshot_splits`;
:func:`splits_from_manifest` turns a draw back into the same :class:`~ssp.data.FewShotSplits`, and
refuses a manifest whose dataset, classes, paths or labels do not match the dataset on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from ssp._io import canonical_json
from ssp.data.base import DatasetSplits, Sample
from ssp.data.fewshot import FewShotSplits, make_fewshot_splits

MANIFEST_FORMAT = "ssp-split-manifest/1"


class ManifestError(ValueError):
    """A manifest that cannot be used with this dataset; the message says why."""


def _sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def _relative(sample: Sample, root: Path) -> str:
    return Path(os.path.relpath(sample.path, root)).as_posix()


def sample_entries(samples: Sequence[Sample], root: str | Path) -> list[list]:
    """``[[relative_path, label], ...]`` in order (paths relative to ``root``, ``/`` separated)."""
    root = Path(root).absolute()
    return [[_relative(s, root), int(s.label)] for s in samples]


def draw_entry(splits: FewShotSplits, replacements: Sequence[dict] = ()) -> dict:
    """One draw of a manifest (shots, seed, support and validation lists with their digests;
    ``replacements``: unreadable shots replaced, see :func:`ssp.data.fewshot.replace_unreadable_shots`)."""
    root = Path(splits.dataset.root).absolute()
    support = sample_entries(splits.support, root)
    val = None if splits.val_policy == "full" else sample_entries(splits.val, root)
    entry = {"shots": int(splits.shots), "seed": int(splits.seed), "support": support,
             "support_sha256": _sha256(support), "val": val, "val_sha256": None if val is None else _sha256(val)}
    if replacements:
        rel = lambda path: Path(os.path.relpath(path, root)).as_posix()  # noqa: E731
        entry["replaced_shots"] = [{"class": int(r["class"]), "replaced": rel(r["replaced"]), "by": rel(r["by"])}
                                   for r in replacements]
    return entry


def make_manifest(dataset: DatasetSplits, draws: Iterable[FewShotSplits] = (), *,
                  val_policy: str | int = "coop", split_file_sha256: str | None = None,
                  replacements: Sequence[dict] = ()) -> dict:
    """A manifest holding ``draws`` (each from :func:`make_fewshot_splits` on ``dataset``);
    ``replacements`` (one draw only): its unreadable shots that were replaced."""
    draws = list(draws)
    entries = [draw_entry(d, replacements) for d in draws]
    for d in draws:
        if d.val_policy != val_policy:
            raise ValueError(f"draw {d.shots}-shot seed {d.seed} has val_policy {d.val_policy!r}, "
                             f"the manifest {val_policy!r}")
    return {"format": MANIFEST_FORMAT, "dataset": dataset.name, "n_classes": dataset.n_classes,
            "classnames": list(dataset.classnames), "val_policy": val_policy,
            "split_file_sha256": split_file_sha256, "draws": entries, "sha256": _sha256(entries)}


def draw_manifest(dataset: DatasetSplits, shots: Sequence[int], seeds: Sequence[int], *,
                  val_policy: str | int = "coop", split_file_sha256: str | None = None) -> dict:
    """Draw every (shots, seed) with :func:`make_fewshot_splits` and return their manifest."""
    draws = [make_fewshot_splits(dataset, k, s, val_policy=val_policy) for k in shots for s in seeds]
    return make_manifest(dataset, draws, val_policy=val_policy, split_file_sha256=split_file_sha256)


def load_manifest(path: str | Path) -> dict:
    """Read a manifest file, or the ``split_manifest`` of a run JSON; checks the format."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ManifestError(f"split manifest {path} does not exist")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(f"split manifest {path} is not valid JSON: {err}") from err
    if isinstance(content, dict) and isinstance(content.get("split_manifest"), dict):
        content = content["split_manifest"]  # a run JSON
    check_format(content, str(path))
    return content


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_entries(items: Any, field: str, source: str) -> None:
    if not isinstance(items, list):
        raise ManifestError(f"{source}: {field} must be a list of [relative_path, label], "
                            f"got {type(items).__name__} {str(items)[:60]!r}")
    for i, item in enumerate(items):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and _is_int(item[1], 0)):
            raise ManifestError(f"{source}: {field}[{i}] must be [relative_path, label], got {str(item)[:80]!r}")


def check_format(manifest: Any, source: str = "split manifest") -> None:
    """The manifest's structure (not its agreement with a dataset), field by field, each error
    naming ``source`` (the file) and the field; digests are rechecked."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ManifestError(f"{source} is not a split manifest (format {got!r}, expected {MANIFEST_FORMAT!r}); "
                            "write one with `ssp-data splits` or give a run JSON written by ssp-fewshot")
    for key in ("dataset", "classnames", "draws"):
        if key not in manifest:
            raise ManifestError(f"{source}: no {key!r} entry")
    if not isinstance(manifest["dataset"], str):
        raise ManifestError(f"{source}: dataset must be a name, got {manifest['dataset']!r}")
    names = manifest["classnames"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ManifestError(f"{source}: classnames must be a list of class names")
    policy = manifest.get("val_policy", "coop")
    if policy not in ("coop", "full") and not _is_int(policy, 1):
        raise ManifestError(f"{source}: val_policy must be coop, full or a positive integer, got {policy!r}")
    draws = manifest["draws"]
    if not isinstance(draws, list):
        raise ManifestError(f"{source}: draws must be a list of draws (objects with shots, seed, support, val), "
                            f"got {type(draws).__name__}")
    for i, draw in enumerate(draws):
        where = f"draws[{i}]"
        if not isinstance(draw, dict):
            raise ManifestError(f"{source}: {where} must be a draw (an object with shots, seed, support, val), "
                                f"got {str(draw)[:60]!r}")
        for key, minimum, what in (("shots", 1, "a positive integer"), ("seed", 0, "an integer >= 0")):
            if key not in draw:
                raise ManifestError(f"{source}: {where} has no {key!r}")
            if not _is_int(draw[key], minimum):
                raise ManifestError(f"{source}: {where}.{key} must be {what}, got {draw[key]!r}")
        where = f"{where} ({draw['shots']}-shot seed {draw['seed']})"
        if "support" not in draw:
            raise ManifestError(f"{source}: {where} has no 'support' list")
        _check_entries(draw["support"], f"{where}.support", source)
        if draw.get("val") is not None:
            _check_entries(draw["val"], f"{where}.val", source)
        for key in ("support", "val"):
            items, digest = draw.get(key), draw.get(f"{key}_sha256")
            if items is not None and _sha256(items) != digest:
                raise ManifestError(f"{source}: the {key} list of {draw['shots']}-shot seed {draw['seed']} "
                                    f"does not match its {key}_sha256 (edited by hand?)")


def find_draw(manifest: dict, shots: int, seed: int) -> dict:
    """The draw for (``shots``, ``seed``); the error lists the draws the manifest holds."""
    for draw in manifest["draws"]:
        if int(draw["shots"]) == int(shots) and int(draw["seed"]) == int(seed):
            return draw
    have = ", ".join(f"{d['shots']}-shot seed {d['seed']}" for d in manifest["draws"]) or "none"
    raise ManifestError(f"the split manifest holds no draw for {shots}-shot seed {seed} (it holds: {have}); "
                        "run only those shots/seeds, or write a manifest with them (ssp-data splits)")


def check_dataset_matches(manifest: dict, dataset: DatasetSplits) -> None:
    """Refuse a manifest made for another dataset or another class list."""
    if manifest["dataset"] != dataset.name:
        raise ManifestError(f"the split manifest is for dataset {manifest['dataset']!r}, not {dataset.name!r}")
    names = list(manifest["classnames"])
    if names != list(dataset.classnames):
        if len(names) != dataset.n_classes:
            why = f"{len(names)} classes in the manifest, {dataset.n_classes} in {dataset.root}"
        else:
            c = next(i for i, (a, b) in enumerate(zip(names, dataset.classnames)) if a != b)
            why = f"class {c} is {names[c]!r} in the manifest, {dataset.classnames[c]!r} in {dataset.root}"
        raise ManifestError(f"the split manifest does not match {dataset.name} on disk: {why} "
                            "(another split file or subset?)")


def _resolve(entries: list, pool: Sequence[Sample], root: Path, what: str, dataset: DatasetSplits) -> list[Sample]:
    by_path = {_relative(s, root): s for s in pool}
    out = []
    for item in entries:
        try:
            rel, label = item
            label = int(label)
        except (TypeError, ValueError):
            raise ManifestError(f"split manifest: {what} entry {item!r} is not [relative_path, label]") from None
        sample = by_path.get(rel)
        if sample is None:
            raise ManifestError(f"split manifest: {what} image {rel!r} is not in the {what} pool of {dataset.name} "
                                f"at {root} (another version of the dataset or split file?)")
        if sample.label != label:
            raise ManifestError(f"split manifest: {rel!r} has label {label} in the manifest, {sample.label} in "
                                f"{dataset.name} at {root}")
        out.append(sample)
    return out


def splits_from_manifest(manifest: dict, dataset: DatasetSplits, shots: int, seed: int) -> FewShotSplits:
    """The :class:`FewShotSplits` that a manifest's draw for (``shots``, ``seed``) describes.

    Support = the listed train images, in the listed order; validation = the listed images (from
    the validation split, or for datasets without one from the train images that are not shots),
    or the whole validation split when the list is ``null``; test = the dataset's test split.
    Raises :class:`ManifestError` when the dataset, classes, paths or labels do not match, or when a
    class has not exactly ``shots`` support images.
    """
    check_dataset_matches(manifest, dataset)
    draw = find_draw(manifest, shots, seed)
    root = Path(dataset.root).absolute()
    support = _resolve(draw["support"], dataset.train, root, "train", dataset)
    per_class = Counter(s.label for s in support)
    wrong = {c: per_class.get(c, 0) for c in range(dataset.n_classes) if per_class.get(c, 0) != shots}
    if wrong:
        c, n = next(iter(wrong.items()))
        raise ManifestError(f"split manifest: {shots}-shot seed {seed} has {n} support image(s) for class {c} "
                            f"({dataset.classnames[c]!r}); every class needs exactly {shots}")
    policy = manifest.get("val_policy", "coop")
    if draw["val"] is None:
        if dataset.val is not None:
            val = list(dataset.val)
        else:  # carved: every train image that is not a shot
            used = {s.path for s in support}
            val = sorted((s for s in dataset.train if s.path not in used), key=lambda s: (s.label, s.path))
    else:
        pool = dataset.val if dataset.val is not None else dataset.train
        val = _resolve(draw["val"], pool, root, "val" if dataset.val is not None else "train", dataset)
        if dataset.val is None and {s.path for s in val} & {s.path for s in support}:
            raise ManifestError(f"split manifest: {shots}-shot seed {seed} uses a support image for validation")
    return FewShotSplits(dataset=dataset, shots=int(shots), seed=int(seed), support=support, val=val,
                         test=list(dataset.test), val_policy=policy)


def run_manifest(splits: FewShotSplits, *, split_file_sha256: str | None = None,
                 replacements: Sequence[dict] = ()) -> dict:
    """The manifest recorded in one run JSON: the run's single draw (with its replaced shots)."""
    return make_manifest(splits.dataset, [splits], val_policy=splits.val_policy,
                         split_file_sha256=split_file_sha256, replacements=replacements)


def fewshot_splits(dataset: DatasetSplits, shots: int, seed: int, *, val_policy: str | int = "coop",
                   manifest: dict | None = None) -> FewShotSplits:
    """The draw of one run: :func:`make_fewshot_splits`, or the manifest's draw when a manifest is
    given (its ``val_policy`` must be the run's, so that the recorded protocol is the one used)."""
    if manifest is None:
        return make_fewshot_splits(dataset, shots, seed, val_policy=val_policy)
    policy = manifest.get("val_policy", "coop")
    if policy != val_policy:
        raise ManifestError(f"the split manifest's validation sets follow val_policy {policy!r}, the run "
                            f"{val_policy!r}; run with --val-policy {policy} (or write a manifest with "
                            f"--val-policy {val_policy})")
    return splits_from_manifest(manifest, dataset, shots, seed)


def check_run_manifest(manifest: dict, dataset: DatasetSplits, shots: Sequence[int], seeds: Sequence[int], *,
                       val_policy: str | int = "coop") -> None:
    """Check up front that ``manifest`` serves every (shots, seed) of a run on ``dataset``."""
    check_dataset_matches(manifest, dataset)
    for k in shots:
        for s in seeds:
            fewshot_splits(dataset, k, s, val_policy=val_policy, manifest=manifest)

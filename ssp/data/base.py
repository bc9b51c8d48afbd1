"""Core data records and the CoOp split-file parser.

A dataset is three lists of :class:`Sample` (absolute image path, integer label, class name) plus
the class names in label order and the prompt templates. Nothing here opens an image.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

#: File extensions treated as images when a folder is listed (compared case-insensitively).
IMG_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder, split file or image is missing; the message says where and what to do."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One image: absolute ``path``, integer ``label`` (0..C-1) and its ``classname``."""

    path: str
    label: int
    classname: str

    def __reduce__(self):  # explicit, so frozen + slots pickles on every Python >= 3.10
        return (Sample, (self.path, self.label, self.classname))


@dataclass(repr=False)
class DatasetSplits:
    """A dataset's full train / val / test lists.

    ``classnames[label]`` is the class name used in prompts (CoOp label order); ``templates`` are
    prompt templates containing ``"{}"``. ``val`` is ``None`` when the dataset has no validation
    split (ImageNet): :func:`ssp.data.make_fewshot_splits` then carves one from unused train images.
    ``train`` is empty for test-only datasets (the ImageNet variants of distribution shift).
    """

    name: str
    root: Path
    classnames: list[str]
    templates: list[str]
    train: list[Sample]
    val: list[Sample] | None
    test: list[Sample]
    #: stable class identifiers (ImageNet's WordNet ids), ``class_ids[label]``; ``None`` when the
    #: dataset has none. A distribution-shift target is mapped onto its source's classes by them.
    class_ids: list[str] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def __repr__(self) -> str:
        val = "None" if self.val is None else str(len(self.val))
        return (
            f"DatasetSplits(name={self.name!r}, root={str(self.root)!r}, "
            f"classes={self.n_classes}, train={len(self.train)}, val={val}, "
            f"test={len(self.test)}, templates={len(self.templates)})"
        )


def clean_classname(name: str) -> str:
    """CoOp's prompt-time clean-up: underscores become spaces, outer whitespace is dropped."""
    return name.replace("_", " ").strip()


def is_image_file(name: str) -> bool:
    """Not hidden and with an image extension."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def list_images(folder: str | Path) -> list[str]:
    """Absolute paths of the image files directly inside ``folder``, sorted by file name."""
    folder = os.path.abspath(folder)
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.is_file() and is_image_file(e.name))
    return [os.path.join(folder, n) for n in names]


def check_templates(templates: Sequence[str] | str, source: str, *,
                    allow_empty: bool = False) -> list[str]:
    """Validate prompt templates: a list of strings (a single string is one template), each with
    exactly one ``"{}"`` where the class name goes; empty only with ``allow_empty`` (e.g. when
    full per-class prompts are given instead)."""
    if isinstance(templates, str):
        templates = [templates]
    templates = list(templates)
    if not templates and not allow_empty:
        raise ValueError(f"no prompt templates given ({source}); give at least one, e.g. 'a photo of a {{}}.'")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(
                f"prompt template {t!r} ({source}) must be a string containing exactly one '{{}}' "
                "where the class name goes, e.g. 'a photo of a {}.'"
            )
    return templates


def classnames_from_samples(splits: Mapping[str, Sequence[Sample]], source: str) -> list[str]:
    """Class names in label order from the samples of all splits.

    Labels must be exactly 0..C-1 (every label used somewhere) and each label must carry one name.
    """
    names: dict[int, str] = {}
    for split, samples in splits.items():
        for s in samples:
            known = names.setdefault(s.label, s.classname)
            if known != s.classname:
                raise ValueError(
                    f"{source}: label {s.label} is called both {known!r} and {s.classname!r} "
                    f"(seen in split '{split}', {s.path}); every label must have one class name"
                )
    if not names:
        raise ValueError(f"{source}: no samples found")
    labels = sorted(names)
    if labels[0] < 0 or labels[-1] != len(labels) - 1:
        missing = sorted(set(range(labels[-1] + 1)) - set(labels))[:10]
        raise ValueError(
            f"{source}: labels must be 0..C-1 without gaps; found {len(labels)} labels from "
            f"{labels[0]} to {labels[-1]} (missing e.g. {missing})"
        )
    return [names[i] for i in labels]


def read_split_file(
    split_file: str | Path,
    image_dir: str | Path,
    *,
    name: str = "custom",
    templates: Sequence[str] = ("a photo of a {}.",),
    rename: Mapping[str, str] | None = None,
    root: str | Path | None = None,
) -> DatasetSplits:
    """Parse a CoOp split JSON (``split_zhou_<Name>.json``) without touching the images.

    The file holds ``{"train": [[relative_path, label, classname], ...], "val": [...],
    "test": [...]}`` with paths relative to ``image_dir``. Class order = sorted labels. Class
    names are passed through ``rename`` (raw name -> name, when given) and then
    :func:`clean_classname`. Sample order = file order.
    """
    split_file = Path(split_file)
    if not split_file.is_file():
        raise DatasetNotFoundError(f"split file not found: {split_file}")
    try:
        with open(split_file, encoding="utf-8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"split file {split_file} is not valid JSON: {err}") from err
    missing = [k for k in ("train", "val", "test") if not isinstance(content, dict) or k not in content]
    if missing:
        raise ValueError(
            f"split file {split_file} must be a JSON object with lists 'train', 'val' and 'test' of "
            f"[relative_path, label, classname]; missing {missing}"
        )
    image_dir = os.path.abspath(image_dir)
    rename = dict(rename or {})
    splits: dict[str, list[Sample]] = {}
    for split in ("train", "val", "test"):
        items = content[split]
        out: list[Sample] = []
        for i, item in enumerate(items):
            try:
                rel, label, classname = item
                label = int(label)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"split file {split_file}: entry {i} of '{split}' is {item!r}; expected "
                    "[relative_path, label, classname]"
                ) from err
            classname = clean_classname(rename.get(classname, classname))
            out.append(Sample(os.path.join(image_dir, rel), label, classname))
        splits[split] = out
    classnames = classnames_from_samples(splits, f"split file {split_file}")
    return DatasetSplits(
        name=name,
        root=Path(root) if root is not None else Path(image_dir),
        classnames=classnames,
        templates=check_templates(templates, f"dataset {name!r}"),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
    )

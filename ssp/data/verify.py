"""``ssp-data verify``: is a benchmark on disk complete, in the layout ``get_dataset`` reads?

Per dataset, :func:`verify_dataset` reports one status:

* ``ok`` -- the folder, the split definition and every image it lists are there (and readable,
  with ``images="header"`` / ``"decode"``);
* ``absent`` -- no folder for the dataset under the root;
* ``missing`` -- the split file, the image folder or listed images are missing;
* ``corrupt`` -- the split file cannot be parsed, or images cannot be read.

It also gives the counts (train / val / test images and classes) against the split file found in
the dataset folder, and compares that file with the official CoOp one (pinned sha256 and counts in
:mod:`ssp.data.catalog`): a different file (e.g. a filtered subset) is reported, not failed,
unless ``strict``. ``ssp-fewshot`` runs the cheap part (``images="exists"``) before extracting
anything, through :func:`check_dataset`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ssp._io import file_sha256
from ssp.data.base import DatasetNotFoundError
from ssp.data.benchmarks import BENCHMARKS, canonical_name, data_folders, dataset_markers, get_dataset, IMAGENET_VARIANTS, resolve_dataset_dir, shipped_class_ids
from ssp.data.catalog import catalog_entry

#: How images are checked: listed files exist / their header opens / they decode fully.
IMAGE_CHECKS = ("exists", "header", "decode")


@dataclass
class DatasetReport:
    """The outcome of :func:`verify_dataset`. ``problem`` is one line; ``fix`` says what to do."""

    name: str
    status: str
    root: Path
    folder: Path | None = None
    split_file: Path | None = None
    split_sha256: str | None = None
    split_official: bool | None = None  # None: the package pins no digest for this split
    n_classes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    n_listed: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problem: str | None = None
    fix: str | None = None
    layout: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self) -> str:
        """One line: ``dtd: ok /data/dtd  10 classes, train/val/test 600/240/360`` or the problem."""
        if self.ok:
            counts = "/".join(str(self.counts.get(k, "-")) for k in ("train", "val", "test"))
            return f"{self.name}: ok  {self.folder}  {self.n_classes} classes, train/val/test {counts}"
        return f"{self.name}: {self.status.upper()}  {self.problem}"

    def details(self, limit: int = 10) -> list[str]:
        """Further lines: notes, the first missing / unreadable paths, the fix, the layout."""
        out = [f"  note: {n}" for n in self.notes]
        if len(self.missing) > 1:
            out.append(f"  first missing ({min(limit, len(self.missing))} of {len(self.missing)}):")
            out += [f"    {p}" for p in self.missing[:limit]]
        if self.unreadable:
            out.append(f"  unreadable ({min(limit, len(self.unreadable))} of {len(self.unreadable)}):")
            out += [f"    {p}: {why}" for p, why in self.unreadable[:limit]]
        if self.fix:
            out.append(f"  fix: {self.fix}")
        if self.layout and not self.ok:
            out.append("  expected layout:")
            out += [f"    {line}" for line in self.layout.splitlines()]
        return out

    def as_dict(self) -> dict:
        return {"dataset": self.name, "status": self.status, "folder": None if self.folder is None else str(self.folder),
                "split_file": None if self.split_file is None else str(self.split_file),
                "split_sha256": self.split_sha256, "split_official": self.split_official,
                "n_classes": self.n_classes, "counts": self.counts, "n_missing": len(self.missing),
                "missing": self.missing[:100], "unreadable": [list(u) for u in self.unreadable[:100]],
                "notes": self.notes, "problem": self.problem, "fix": self.fix}


def _fix_download(name: str, root: Path) -> str:
    source = catalog_entry(name)
    if source.fetchable:
        return f"ssp-data download {name} --root {root}"
    return f"follow the manual steps that `ssp-data download {name} --root {root}` prints (datasets/{name}.md)"


def split_path(name: str, folder: Path, split_file: str | Path | None) -> Path | None:
    if split_file is not None:
        return Path(split_file).expanduser()
    b = BENCHMARKS[name]
    if b.kind == "json":
        return folder / b.split_name
    if b.kind == "imagenet":
        return folder / "classnames.txt"
    if b.kind == "imagenet_variant" and (folder / "classnames.txt").is_file():
        return folder / "classnames.txt"
    return None


def _compare_with_official(report: DatasetReport, name: str) -> None:
    split = catalog_entry(name).split
    if split is None or report.split_file is None:
        return
    if split.sha256 is None:
        report.notes.append(f"the package pins no digest for {split.filename}; this one has sha256 "
                            f"{report.split_sha256}")
        return
    report.split_official = report.split_sha256 == split.sha256
    if report.split_official:
        return
    counts = "/".join(str(report.counts.get(k, "-")) for k in ("train", "val", "test"))
    official = ""
    if split.counts:
        tr, va, te, c = split.counts
        official = f" (official: {c} classes, {tr}/{va}/{te})"
        if report.n_classes < c:
            official += f"; a {report.n_classes}-class subset"
    report.notes.append(
        f"{report.split_file.name} is not the official CoOp file: {report.n_classes} classes, train/val/test "
        f"{counts}{official}; sha256 {report.split_sha256[:16]}... vs official {split.sha256[:16]}.... "
        "Results are not comparable with published numbers; the official file: "
        f"move this one away and run ssp-data download {name} --root {report.root}")


def _check_images(paths: list[str], mode: str, progress: bool) -> list[tuple[str, str]]:
    from PIL import Image
    from tqdm.auto import tqdm

    bad = []
    for path in tqdm(paths, desc="images", unit="img", disable=not progress, leave=False):
        try:
            with Image.open(path) as img:
                if mode == "decode":
                    img.load()
        except Exception as err:  # noqa: BLE001 -- any decoder failure makes the image unreadable
            bad.append((path, " ".join(str(err).split()) or type(err).__name__))
    return bad


def verify_dataset(name: str, root: str | Path, *, split_file: str | Path | None = None, images: str = "exists",
                   strict: bool = False, progress: bool = False) -> DatasetReport:
    """Check one benchmark under ``root`` (the data folder or the dataset folder itself).

    Args:
        name: a benchmark of :func:`ssp.data.list_datasets` (not ``imagefolder``).
        split_file: read the split definition from here instead of the dataset folder.
        images: ``"exists"`` (listed files exist), ``"header"`` (each opens as an image) or
            ``"decode"`` (each decodes fully; slowest).
        strict: a split file that differs from the official CoOp one is a problem, not a note.
    """
    if images not in IMAGE_CHECKS:
        raise ValueError(f"images must be one of {IMAGE_CHECKS}, got {images!r}")
    key = canonical_name(name)
    if key not in BENCHMARKS:
        raise ValueError(f"{name!r} has no fixed layout to verify; get_dataset('imagefolder', ...) checks its folders")
    b = BENCHMARKS[key]
    root = Path(root).expanduser().absolute()
    report = DatasetReport(key, "ok", root, layout=b.layout)
    try:
        folder = resolve_dataset_dir(b, root)
    except DatasetNotFoundError:
        report.status = "absent"
        report.problem = f"no {key} folder under {root} (looked for {', '.join(b.folders)}/)"
        report.fix = _fix_download(key, root)
        return report
    report.folder = folder
    parent = folder.parent
    report.split_file = split_path(key, folder, split_file)
    try:
        ds = get_dataset(key, folder, split_file=split_file, check_files=False)
    except DatasetNotFoundError as err:
        report.status = "missing"
        report.problem = str(err).splitlines()[0]
        report.fix = _fix_download(key, parent)
        if key == "stanford_cars":
            _cars_hint(report, folder)
        return report
    except (ValueError, OSError) as err:
        report.status = "corrupt"
        report.problem = str(err).splitlines()[0]
        if split_file is not None:  # the user's own file: fix it, or use the dataset's
            report.fix = (f"correct {split_file} (a JSON object with lists 'train', 'val' and 'test' of "
                          "[relative_path, label, classname]), or leave out --split-file to use the dataset's "
                          "own split file")
        elif report.split_file:
            report.fix = f"delete {report.split_file} and run {_fix_download(key, parent)}"
        else:
            report.fix = None
        return report
    if report.split_file is not None and report.split_file.is_file():
        report.split_sha256 = file_sha256(report.split_file)
    report.n_classes = ds.n_classes
    report.counts = {"train": len(ds.train), "val": len(ds.val) if ds.val is not None else 0, "test": len(ds.test)}
    _compare_with_official(report, key)
    paths = [s.path for part in (ds.train, ds.val or [], ds.test) for s in part]
    report.n_listed = len(paths)
    report.missing = [p for p in dict.fromkeys(paths) if not os.path.isfile(p)]
    listed_in = report.split_file.name if report.split_file is not None else "the split"
    if report.missing:
        report.status = "missing"
        more = f" (and {len(report.missing) - 1} more)" if len(report.missing) > 1 else ""
        report.problem = (f"{len(report.missing)} of {len(set(paths))} images listed in {listed_in} are missing, "
                          f"e.g. {report.missing[0]}{more}")
        report.fix = (f"restore the file(s), or delete {folder} except {listed_in} and run "
                      f"{_fix_download(key, parent)}")
        if key == "stanford_cars":
            _cars_hint(report, folder)
        return report
    if images != "exists":
        report.unreadable = _check_images(list(dict.fromkeys(paths)), images, progress)
        if report.unreadable:
            path, why = report.unreadable[0]
            more = f" (and {len(report.unreadable) - 1} more)" if len(report.unreadable) > 1 else ""
            report.status = "corrupt"
            report.problem = f"{len(report.unreadable)} unreadable image(s), e.g. {path}: {why}{more}"
            report.fix = ("replace the file(s) from the original archive, or run ssp-fewshot with "
                          "--skip-bad-images to leave them out (recorded in each run)")
            return report
    if b.kind == "imagenet_variant":
        _check_variant(report, key, ds)
        if not report.ok:
            return report
    if strict and report.split_official is False:
        report.status = "corrupt"
        report.problem = report.notes[-1]
        report.fix = f"move {report.split_file} away and run ssp-data download {key} --root {parent}"
    return report


def _check_variant(report: DatasetReport, key: str, ds) -> None:
    """An ImageNet variant: the official release's class list and image count."""
    expected = IMAGENET_VARIANTS[key][1]
    shipped = shipped_class_ids(key)
    if ds.class_ids != shipped:
        report.notes.append(f"{report.split_file.name if report.split_file else 'the class list'} lists "
                            f"{len(ds.class_ids)} classes, not the release's {len(shipped)} "
                            f"(ssp/data/class_subsets/{IMAGENET_VARIANTS[key][0]}): your own subset")
    if len(ds.test) != expected:
        counts: dict[str, int] = {}
        for sample in ds.test:
            counts[sample.label] = counts.get(sample.label, 0) + 1
        empty = [ds.class_ids[c] for c in range(ds.n_classes) if c not in counts]
        report.status = "missing"
        report.problem = (f"{len(ds.test):,} images in {report.folder}, the release has {expected:,}"
                          + (f"; class folder(s) without images: {', '.join(empty[:5])}" if empty else ""))
        report.fix = f"restore the missing images (re-extract the archive), or {_fix_download(key, report.root)}"


def _cars_hint(report: DatasetReport, folder: Path) -> None:
    """The doubled folders of a widely used Stanford Cars copy: say how to flatten them."""
    for part in ("cars_train", "cars_test"):
        if (folder / part / part).is_dir():
            report.fix = (f"this is the layout of a Kaggle copy with doubled folders: mv {folder / part / part} "
                          f"{folder / (part + '.tmp')} && rmdir {folder / part} && mv {folder / (part + '.tmp')} "
                          f"{folder / part}  (same for the other split folder)")
            return


def verify_root(root: str | Path, names: list[str] | None = None, **kwargs) -> list[DatasetReport]:
    """Reports for ``names`` (every benchmark whose folder exists under ``root`` when ``None``)."""
    root = Path(root).expanduser()
    if names:
        keys = list(dict.fromkeys(canonical_name(n) for n in names))
    else:
        keys = [k for k, b in BENCHMARKS.items()
                if any((base / f).is_dir() for base in data_folders(root) for f in b.folders)]
        if not keys:  # root may be one dataset's folder itself
            keys = [k for k, b in BENCHMARKS.items() if all((root / m).exists() for m in dataset_markers(b))]
    return [verify_dataset(k, root, **kwargs) for k in keys]


def check_dataset(name: str, root: str | Path, *, split_file: str | Path | None = None,
                  missing_ok: bool = False) -> DatasetReport | None:
    """The cheap check ``ssp-fewshot`` runs before extraction: raise :class:`DatasetNotFoundError`
    (one line + the fix) when the split definition or a listed image is missing. ``missing_ok``
    (``--skip-bad-images``): missing images are bad images, left out later, not an error here.
    Returns the report (``None`` for ``imagefolder``, whose own reader checks its folders)."""
    key = canonical_name(name)
    if key not in BENCHMARKS:
        return None
    report = verify_dataset(key, root, split_file=split_file, images="exists")
    if missing_ok and report.status == "missing" and report.missing:
        return report
    if not report.ok:
        lines = [report.line()] + [line for line in report.details(limit=5) if not line.startswith("  note")]
        raise DatasetNotFoundError("\n".join(lines))
    return report

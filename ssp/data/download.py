"""``ssp-data download``: fetch a benchmark (resume + checksum), lay it out as ``get_dataset`` reads it.

Per dataset (table: :mod:`ssp.data.catalog`):

1. the CoOp split file: an existing one in the dataset folder is kept; else a copy vendored in
   ``ssp/data/splits/``; else a download, checked against the pinned sha256;
2. when every image the split lists is already there, nothing else happens (a second call is a
   no-op, no network);
3. otherwise each archive is downloaded into ``<root>/.ssp-downloads/`` (``<file>.part`` while
   incomplete; an interrupted download resumes with an HTTP Range request), checked (md5 / sha256)
   *before* anything is extracted, extracted into a hidden staging folder, and its folders are
   moved (renamed, never copied) into the dataset folder; a failure removes the staging folder, so
   nothing half-extracted is left behind;
4. archives are deleted once laid out (``keep_archives=True`` keeps them), and
   ``<folder>/.ssp-download.json`` records what was fetched and the digests.

Datasets without fetchable images (ImageNet, Stanford Cars, UCF101) get their split file (or class
names) and the manual steps plus the layouts ``ssp-data verify`` accepts.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ssp._io import file_sha256, write_json_atomic
from ssp.data.catalog import (
    SPLIT_CREDIT,
    CatalogEntry,
    Resource,
    catalog_entry,
    packaged_split_file,
    resource_urls,
)
from ssp.data.benchmarks import BENCHMARKS, data_folders
from ssp.data.verify import verify_dataset

#: Folder under the data root holding archives while they download (``.part`` files) and staging folders.
DOWNLOADS = ".ssp-downloads"
#: Record written into a dataset folder once it has been laid out.
MARKER = ".ssp-download.json"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed (network, host, checksum, archive content); the message says what to do."""


@dataclass
class DownloadResult:
    """What ``download_dataset`` did: ``status`` is ``ready``, ``manual`` (steps printed) or ``failed``."""

    name: str
    status: str
    folder: Path
    message: str
    n_files: int = 0
    n_bytes: int = 0
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- fetching
def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_file(path: Path, *, md5: str | None = None, sha256: str | None = None) -> str | None:
    """``None`` when ``path`` matches the given digests, else a one-line description of the mismatch."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            got = _digest(path, algorithm)
            if got != expected:
                return f"{algorithm} {got}, expected {expected}"
    return None


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "ssp-data (python urllib)"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def fetch(urls: tuple[str, ...] | list[str] | str, dest: str | Path, *, md5: str | None = None,
          sha256: str | None = None, progress: bool = True, retries: int = 2, timeout: float = 60.0,
          expect_html: bool = False, by_hand: str | Path | None = None) -> Path:
    """Download ``dest`` from the first URL that works, resuming ``dest.part`` if it exists.

    The file is checked against ``md5`` / ``sha256`` (when given) before it is renamed to ``dest``;
    a mismatch deletes the partial file and raises :class:`DownloadError`. An existing ``dest``
    that passes the check is returned at once. ``retries``: extra attempts per URL after a dropped
    connection, each resuming where the previous one stopped. ``by_hand``: where a file fetched by
    hand goes (named in the errors; default ``dest``).
    """
    urls = (urls,) if isinstance(urls, str) else tuple(urls)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if check_file(dest, md5=md5, sha256=sha256) is None:
            return dest
        dest.unlink()  # a stale or damaged copy: fetch it again
    part = dest.with_name(dest.name + ".part")
    errors: list[str] = []
    for url in urls:
        for attempt in range(retries + 1):
            outcome = _attempt(url, part, timeout=timeout, progress=progress, expect_html=expect_html,
                               errors=errors, desc=dest.name)
            if outcome != "retry":
                break
            if attempt < retries:
                time.sleep(min(0.2 * 2 ** attempt, 5))
        if outcome == "done" and _complete(part, md5, sha256, url, Path(by_hand or dest)):
            os.replace(part, dest)
            return dest
    tried = "; ".join(dict.fromkeys(errors)) or "no URL to try"
    hint = (f"rerun the same command to resume ({part} holds {part.stat().st_size} bytes)" if part.is_file()
            else "check the network, or set $SSP_DATA_MIRROR / --mirror to a server holding the file")
    raise DownloadError(f"could not download {dest.name}: {tried}; {hint}")


def _attempt(url: str, part: Path, *, timeout: float, progress: bool, expect_html: bool, errors: list[str],
             desc: str) -> str:
    """One request, appending to (or, without Range support, rewriting) ``part``: ``"done"`` when the
    whole file arrived, ``"retry"`` after a dropped connection, ``"fail"`` otherwise."""
    from tqdm.auto import tqdm

    start = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # nothing left to send: the part file is complete
            return "done"
        errors.append(f"{url}: HTTP {err.code} {err.reason}")
        return "fail"
    except (urllib.error.URLError, OSError) as err:
        errors.append(f"{url}: {getattr(err, 'reason', err)}")
        return "retry"
    with response:
        if "text/html" in response.headers.get("Content-Type", "") and not expect_html:
            errors.append(f"{url}: the host sent a web page instead of the file (a moved link, a quota or a "
                          "login page)")
            return "fail"
        resumed = response.status == 206 and start > 0
        length = response.headers.get("Content-Length")
        total = (int(length) + (start if resumed else 0)) if length and length.isdigit() else None
        try:
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                    total=total, initial=start if resumed else 0, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=desc, disable=not progress, leave=False) as bar:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
        except (OSError, urllib.error.URLError) as err:  # dropped connection: resume on the next try
            errors.append(f"{url}: interrupted after {part.stat().st_size} bytes ({err})")
            return "retry"
    if total is not None and part.stat().st_size < total:
        errors.append(f"{url}: interrupted after {part.stat().st_size} of {total} bytes")
        return "retry"
    return "done"


def _complete(part: Path, md5, sha256, url: str, by_hand: Path) -> bool:
    """True when ``part`` matches the checksums; a mismatch removes it and raises."""
    problem = check_file(part, md5=md5, sha256=sha256)
    if problem is None:
        return True
    part.unlink()
    name = part.name[: -len(".part")]
    raise DownloadError(
        f"checksum mismatch for {name} from {url}: {problem}; the download was deleted and nothing was "
        f"extracted. Rerun to download it again; if it fails again, that URL serves another file than the "
        f"pinned one: fetch {name} by hand, check it, and put it at {by_hand}")


# --------------------------------------------------------------------------------------------- extracting
def extract_archive(archive: Path, dest: Path, *, progress: bool = False) -> Path:
    """Extract a tar(.gz/.bz2/.xz) or zip archive into ``dest`` (created); members that would land
    outside ``dest`` (absolute paths, ``..``, links out) are refused. ``progress``: a bar counting
    the extracted files."""
    from tqdm.auto import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    bar = tqdm(desc=f"extract {archive.name}", unit=" files", disable=not progress, leave=False)

    def counted(members):
        for member in members:
            bar.update()
            yield member

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf, bar:
            names = zf.namelist()
            for member in names:
                target = (dest / member).resolve()
                if target != root and root not in target.parents:
                    raise DownloadError(f"{archive.name}: member {member!r} would be written outside {dest}; "
                                        "refusing this archive")
            bar.total = len(names)
            zf.extractall(dest, members=counted(names))
        return dest
    try:
        with tarfile.open(archive) as tf, bar:
            tf.extractall(dest, members=counted(tf), filter="data")
    except tarfile.FilterError as err:
        raise DownloadError(f"{archive.name}: {err}; refusing this archive") from err
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"{archive.name} is not a readable tar or zip archive ({err}); delete it and rerun") from err
    return dest


def _find(tree: Path, filename: str) -> Path | None:
    for path in sorted(tree.rglob(filename)):
        if path.is_file() and "__MACOSX" not in path.parts:
            return path
    return None


def _move(src: Path, dst: Path) -> None:
    """A rename (no copy); across filesystems (a dataset folder linked elsewhere) a move."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        shutil.move(str(src), str(dst))


def _lay_out(resource: Resource, archive: Path, staging: Path, assembled: Path, keep: bool,
             progress: bool = False) -> None:
    """Extract ``archive`` (or its ``inner`` archive) and move its parts into ``assembled``; a plain
    file (``extract=False``) is moved, or copied when ``keep``."""
    if not resource.extract:
        target = assembled / resource.moves[0][1]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(archive, target) if keep else _move(archive, target)
        return
    tree = extract_archive(archive, staging / f"{resource.filename}.d", progress=progress)
    if resource.inner:
        inner = _find(tree, resource.inner)
        if inner is None:
            raise DownloadError(f"{resource.filename} holds no {resource.inner}: not the expected archive; "
                                f"delete {archive} and rerun")
        tree = extract_archive(inner, staging / f"{resource.inner}.d", progress=progress)
    for src_rel, dst_rel in resource.moves:
        if src_rel.endswith("/*"):
            src_dir = tree / src_rel[:-2]
            if not src_dir.is_dir():
                raise DownloadError(f"{resource.filename} holds no {src_rel[:-2]}/: not the expected archive; "
                                    f"delete {archive} and rerun")
            for entry in sorted(src_dir.iterdir()):
                _move(entry, assembled / dst_rel / entry.name)
        else:
            src = tree / src_rel
            if not src.exists():
                raise DownloadError(f"{resource.filename} holds no {src_rel}: not the expected archive; "
                                    f"delete {archive} and rerun")
            _move(src, assembled / dst_rel)


def _commit(assembled: Path, final: Path) -> list[str]:
    """Move ``assembled`` into ``final`` (a rename when ``final`` does not exist); entries already in
    ``final`` are kept, never overwritten. Returns notes on what was kept."""
    notes = []
    if not final.exists():
        _move(assembled, final)
        return notes
    for entry in sorted(assembled.iterdir()):
        target = final / entry.name
        if target.exists() or target.is_symlink():
            notes.append(f"kept the existing {target} (the downloaded one was discarded; delete it and rerun "
                         "to replace it)")
        else:
            _move(entry, target)
    return notes


# --------------------------------------------------------------------------------------------- sizes
def folder_size(folder: Path) -> tuple[int, int]:
    """``(files, bytes)`` under ``folder``; symbolic links are followed once, at the top level."""
    n_files = n_bytes = 0
    for top in (folder.resolve(),):
        for dirpath, _, filenames in os.walk(top, followlinks=True):
            for name in filenames:
                try:
                    n_bytes += os.stat(os.path.join(dirpath, name)).st_size
                    n_files += 1
                except OSError:
                    pass
    return n_files, n_bytes


def human_size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n_bytes} B"  # pragma: no cover


# --------------------------------------------------------------------------------------------- datasets
def dataset_folder(source: CatalogEntry, root: Path) -> Path:
    """The dataset's folder under ``root`` (or ``root/coop``, :func:`ssp.data.benchmarks.data_folders`):
    an existing one under any accepted name, else CoOp's name in ``root/coop`` when that exists,
    else in ``root``."""
    bases = data_folders(root)
    for base in bases:
        for name in BENCHMARKS[source.name].folders:
            if (base / name).is_dir():
                return base / name
    return bases[-1] / source.folder


def ensure_split_file(source: CatalogEntry, folder: Path, downloads: Path, *, mirror: str | None = None,
                      progress: bool = True) -> tuple[Path | None, list[str]]:
    """Put the CoOp split file into ``folder`` (kept when present). Returns ``(path, notes)``."""
    split = source.split
    if split is None:
        return None, []
    target = folder / split.filename
    if target.is_file():
        if split.sha256 and file_sha256(target) != split.sha256:
            return target, [f"{target} differs from the official CoOp split file (sha256 {file_sha256(target)[:12]}..., "
                            f"official {split.sha256[:12]}...); kept. To use the official one, delete it and rerun"]
        return target, []
    vendored = packaged_split_file(split.filename)
    if vendored is not None:
        import gzip

        opener = gzip.open if vendored.suffix == ".gz" else open
        tmp = downloads / split.filename
        downloads.mkdir(parents=True, exist_ok=True)
        with opener(vendored, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        source_note = f"copied from the package ({vendored.name})"
    else:
        urls = resource_urls(split.filename, split.urls, mirror)
        if not urls:
            raise DownloadError(f"no link known for {split.filename}; get it from {split.page} and put it at {target}")
        try:
            tmp = fetch(urls, downloads / split.filename, sha256=split.sha256, progress=progress, by_hand=target)
        except DownloadError as err:
            raise DownloadError(f"{err} (the file's page: {split.page})") from err
        source_note = "downloaded"
    problem = check_file(tmp, sha256=split.sha256) if split.sha256 else _split_problem(tmp)
    if problem:
        tmp.unlink()
        raise DownloadError(f"{split.filename}: {problem}; get it from {split.page} and put it at {target}")
    folder.mkdir(parents=True, exist_ok=True)
    _move(tmp, target)
    pin = "sha256 matches the pinned digest" if split.sha256 else \
        f"no digest pinned by the package; sha256 {file_sha256(target)}"
    return target, [f"split file {split.filename} {source_note} ({pin}); {SPLIT_CREDIT}"]


def _split_problem(path: Path) -> str | None:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        return f"not a JSON split file ({err})"
    if not isinstance(content, dict) or not all(k in content for k in ("train", "val", "test")):
        return "not a split file (no train / val / test lists)"
    return None


def _images_complete(name: str, folder: Path) -> bool:
    """Whether every image the split lists exists (the cheap check; needs the split definition)."""
    return verify_dataset(name, folder, images="exists").ok


def download_dataset(name: str, root: str | Path, *, mirror: str | None = None, keep_archives: bool = False,
                     progress: bool = True, echo: Callable[[str], None] = print) -> DownloadResult:
    """Fetch and lay out one benchmark under ``root`` (see the module docstring).

    Returns a :class:`DownloadResult`; raises :class:`DownloadError` when a download or an archive
    fails (nothing half-extracted is left behind; a partial download stays as ``.part`` to resume).
    """
    source = catalog_entry(name)
    root = Path(root).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    downloads = root / DOWNLOADS
    try:
        return _download_dataset(source, root, downloads, mirror=mirror, keep_archives=keep_archives,
                                 progress=progress, echo=echo)
    finally:
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()  # nothing kept to resume: no empty folder left behind


def _download_dataset(source: CatalogEntry, root: Path, downloads: Path, *, mirror: str | None,
                      keep_archives: bool, progress: bool, echo: Callable[[str], None]) -> DownloadResult:
    folder = dataset_folder(source, root)
    notes: list[str] = []

    split_error = None
    if source.split is not None:
        try:
            _, split_notes = ensure_split_file(source, folder, downloads, mirror=mirror, progress=progress)
            notes += split_notes
        except DownloadError as err:  # go on: the images may still come, the message says how to get the file
            split_error = f"{source.name}: split file not fetched: {err}"
    if not source.fetchable:
        if split_error is None and folder.is_dir() and _images_complete(source.name, folder):
            return _ready(source, folder, notes, "already in place")
        steps = manual_steps(source, folder)
        return DownloadResult(source.name, "manual", folder, steps if split_error is None else f"{steps}\n{split_error}",
                              notes=notes)
    if folder.is_dir() and _images_complete(source.name, folder):
        return _ready(source, folder, notes, "already downloaded" if (folder / MARKER).is_file() else "already in place")

    for stale in downloads.glob(f".{source.name}.staging.*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    staging = downloads / f".{source.name}.staging.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    assembled = staging / "assembled"
    assembled.mkdir(parents=True)
    record = {"dataset": source.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "files": {}}
    archives = []
    try:
        _fetch_and_lay_out(source, downloads, staging, assembled, record, archives, mirror=mirror,
                           keep_archives=keep_archives, progress=progress, echo=echo)
        folder.parent.mkdir(parents=True, exist_ok=True)
        notes += _commit(assembled, folder)
    except DownloadError as err:
        if split_error is not None:
            raise DownloadError(f"{err}\n{split_error}") from err
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if source.split is not None and (folder / source.split.filename).is_file():
        record["split_file"] = {"name": source.split.filename, "sha256": file_sha256(folder / source.split.filename),
                                "official_sha256": source.split.sha256}
    write_json_atomic(folder / MARKER, record)
    if not keep_archives:
        for archive in archives:
            if archive.is_file():
                archive.unlink()
    if split_error is not None:
        return DownloadResult(source.name, "failed", folder, f"images laid out in {folder}, but {split_error}",
                              notes=notes)
    if not _images_complete(source.name, folder):
        report = verify_dataset(source.name, folder, images="exists")
        return DownloadResult(source.name, "failed", folder, f"laid out, but {report.line()}", notes=notes)
    return _ready(source, folder, notes, "downloaded")


def _fetch_and_lay_out(source: CatalogEntry, downloads: Path, staging: Path, assembled: Path, record: dict,
                       archives: list[Path], *, mirror: str | None, keep_archives: bool, progress: bool,
                       echo: Callable[[str], None]) -> None:
    """Download every archive of ``source`` (checksum first) and move its parts into ``assembled``."""
    for resource in source.resources:
        urls = resource_urls(resource.filename, resource.urls, mirror)
        echo(f"[ssp-data] {source.name}: {resource.filename} <- {urls[0]}")
        archive = fetch(urls, downloads / resource.filename, md5=resource.md5, sha256=resource.sha256,
                        progress=progress)
        record["files"][resource.filename] = {"url": urls[0], "md5": resource.md5,
                                              "sha256": file_sha256(archive), "bytes": archive.stat().st_size,
                                              "checksum_pinned_by": resource.pinned_by}
        _lay_out(resource, archive, staging, assembled, keep_archives, progress)
        archives.append(archive)


def _ready(source: CatalogEntry, folder: Path, notes: list[str], how: str) -> DownloadResult:
    n_files, n_bytes = folder_size(folder)
    return DownloadResult(source.name, "ready", folder,
                          f"{source.name}: {how}, ready at {folder} ({n_files:,} files, {human_size(n_bytes)})",
                          n_files=n_files, n_bytes=n_bytes, notes=notes)


def manual_steps(source: CatalogEntry, folder: Path) -> str:
    """The manual steps for a dataset no library can fetch, with the layout ``ssp-data verify`` accepts."""
    lines = [f"{source.name}: the images cannot be downloaded automatically. Manual steps:",
             "  " + source.manual.replace("{folder}", str(folder))]
    if source.alternatives:
        lines.append("  Copies people use instead:")
        lines += ["   - " + alt.replace("{folder}", str(folder)) for alt in source.alternatives]
    lines.append(f"  Layout that `ssp-data verify --root {folder.parent} {source.name}` accepts:")
    lines += ["    " + line for line in BENCHMARKS[source.name].layout.splitlines()]
    if source.split is not None:
        lines.append(f"  Split file: {source.split.filename} ({source.split_note}); {source.split.page}")
    else:
        lines.append(f"  Split: {source.split_note}")
    lines.append(f"  Then check it: ssp-data verify --root {folder.parent} {source.name}")
    return "\n".join(lines)

"""``ssp-data``: download, check and draw the few-shot splits of the benchmarks.

Examples::

    ssp-data download dtd oxford_pets --root DATA     # fetch (resume + checksum), lay out as ssp-fewshot reads
    ssp-data download stanford_cars --root DATA       # split file + the manual steps for the images
    ssp-data verify --root DATA                       # every dataset found under DATA
    ssp-data verify --root DATA dtd --images decode   # decode every image too
    ssp-data splits --dataset dtd --root DATA --shots 1 2 4 8 16 --seeds 1 2 3 -o dtd_splits.json
    ssp-data list                                     # what can be fetched, split files and their digests
    ssp-data download prompts cupl --root DATA        # a prompt library (cupl, dclip, waffle): DATA/prompts/cupl/
    ssp-data verify prompts --root DATA               # the prompt files against their pinned sha256
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ssp.cli._args import int_at_least, with_cli_messages

PROG = "ssp-data"

# Each command imports its ssp.data modules inside itself: `ssp-data` starts fast and never imports
# torch (ssp.data's image loaders are the only part that needs it).


def _data_root() -> str | None:
    return os.environ.get("SSP_DATA_ROOT") or None


def build_parser() -> argparse.ArgumentParser:
    from ssp.data.verify import IMAGE_CHECKS

    p = argparse.ArgumentParser(prog=PROG, description="Download, verify and draw few-shot splits of the 11 "
                                "few-shot benchmarks, in the layout ssp-fewshot reads (datasets/README.md).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("download", help="fetch datasets (resume + checksum) and lay them out; manual steps "
                                        "for those no library can fetch")
    d.add_argument("names", nargs="+", metavar="NAME", help="benchmarks, e.g. dtd oxford_pets (see `ssp-data list`); "
                                                            "or `prompts cupl dclip waffle` (prompt libraries)")
    d.add_argument("--root", default=_data_root(), required=_data_root() is None,
                   help="data folder that receives <dataset>/ folders (in its coop/ subfolder when it has one); "
                        "default $SSP_DATA_ROOT")
    d.add_argument("--mirror", help="base URL serving every file under its file name, replacing the table's URLs "
                                    "(default $SSP_DATA_MIRROR); checksums still apply")
    d.add_argument("--keep-archives", action="store_true", help="keep the archives once laid out")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")

    v = sub.add_parser("verify", help="check datasets on disk: found / absent / missing / corrupt, counts, "
                                      "the split file against the official one")
    v.add_argument("names", nargs="*", metavar="NAME", help="benchmarks (default: every one found under --root); "
                                                            "or `prompts [LIBRARY ...]`")
    v.add_argument("--root", default=_data_root(), required=_data_root() is None,
                   help="data folder holding <dataset>/ folders directly or in its coop/ subfolder (or one dataset "
                        "folder with one NAME); default $SSP_DATA_ROOT")
    v.add_argument("--split-file", help="read the split definition from this file (one NAME)")
    v.add_argument("--images", choices=IMAGE_CHECKS, default="header",
                   help="exists: listed files exist; header (default): each opens as an image; decode: each "
                        "decodes fully (slowest)")
    v.add_argument("--strict", action="store_true",
                   help="fail when a split file differs from the official CoOp file (default: report it)")
    v.add_argument("--json", metavar="FILE", help="also write the reports as JSON")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")

    s = sub.add_parser("splits", help="write the few-shot split manifest (exact support / validation images "
                                      "per shots and seed) without running anything")
    s.add_argument("--dataset", required=True, help="benchmark name")
    s.add_argument("--root", default=_data_root(), required=_data_root() is None,
                   help="data folder (only the split definition is read); default $SSP_DATA_ROOT")
    s.add_argument("--split-file", help="read the split definition from this file")
    s.add_argument("--shots", type=int_at_least(1), nargs="+", required=True, help="shot counts, e.g. 1 2 4 8 16")
    s.add_argument("--seeds", type=int_at_least(0), nargs="+", required=True, help="seeds, e.g. 1 2 3")
    s.add_argument("--val-policy", default="coop", help="coop (min(K,4) per class), full, or an integer per class")
    s.add_argument("-o", "--output", required=True, help="manifest file to write (JSON)")

    sub.add_parser("list", help="the download table: what is fetched, split files and their digests")
    return p


def _prompt_libraries(names: list[str]) -> list[str]:
    from ssp.data.prompt_library import library_names

    wanted = list(dict.fromkeys(n.lower() for n in names[1:])) or list(library_names())
    unknown = [n for n in wanted if n not in library_names()]
    if unknown:
        raise SystemExit(f"{PROG}: error: unknown prompt library {unknown[0]!r}; choose from "
                         f"{', '.join(library_names())}")
    return wanted


def _download_prompts(args) -> int:
    from ssp.data.download import DownloadError
    from ssp.data.prompt_library import download_prompts

    failed = 0
    for name in _prompt_libraries(args.names):
        try:
            folder, notes = download_prompts(name, args.root, mirror=args.mirror, progress=not args.no_progress)
        except (DownloadError, ValueError, OSError) as err:
            print(f"{PROG}: prompts {name}: error: {err}", file=sys.stderr)
            failed += 1
            continue
        for note in notes:
            print(f"  note: {note}")
        print(f"prompts {name}: ready in {folder} (each file checked against its pinned sha256)")
    return 1 if failed else 0


def _output_file(path: str, flag: str) -> None:
    """Exit, before any work, when ``flag``'s file cannot be written."""
    from ssp._io import check_writable_file

    try:
        check_writable_file(path)
    except OSError as err:
        raise SystemExit(f"{PROG}: error: {flag}: {err}; choose another file")


def _write_json(path: str, payload, flag: str):
    from ssp._io import write_json_atomic

    try:
        return write_json_atomic(path, payload)
    except OSError as err:
        raise SystemExit(f"{PROG}: error: {flag} {path}: cannot write it ({err.strerror or err}); choose another file")


def _download(args) -> int:
    from ssp.data.catalog import mirror_url
    from ssp.data.download import DownloadError, download_dataset

    try:
        mirror_url(args.mirror)
    except ValueError as err:
        raise SystemExit(f"{PROG}: error: {err}")
    if args.names[0].lower() == "prompts":
        return _download_prompts(args)
    failed = 0
    for name in dict.fromkeys(args.names):
        try:
            result = download_dataset(name, args.root, mirror=args.mirror, keep_archives=args.keep_archives,
                                      progress=not args.no_progress)
        except (DownloadError, ValueError, OSError) as err:
            print(f"{PROG}: {name}: error: {err}", file=sys.stderr)
            failed += 1
            continue
        for note in result.notes:
            print(f"  note: {note}")
        print(result.message)
        if result.status != "ready":
            failed += 1
    if failed:
        print(f"{PROG}: {failed} dataset(s) not ready (see above)", file=sys.stderr)
    return 1 if failed else 0


def _verify(args) -> int:
    from ssp.data.verify import verify_dataset, verify_root

    if args.split_file and len(args.names) != 1:
        raise SystemExit(f"{PROG}: error: --split-file applies to one dataset; name it")
    root = Path(args.root).expanduser()
    if not root.is_dir():
        raise SystemExit(f"{PROG}: error: --root {root}: no such folder")
    if args.names and args.names[0].lower() == "prompts":
        from ssp.data.prompt_library import verify_prompts

        reports = verify_prompts(root, _prompt_libraries(args.names) if len(args.names) > 1 else None)
        if not reports:
            raise SystemExit(f"{PROG}: error: no prompt library under {root}/prompts; fetch one: "
                             f"ssp-data download prompts cupl --root {root}")
        for _, _, line in reports:
            print(line)
        return 0 if all(ok for _, ok, _ in reports) else 1
    if args.json:
        _output_file(args.json, "--json")
    kw = {"images": args.images, "strict": args.strict, "progress": not args.no_progress}
    try:
        if args.split_file:
            reports = [verify_dataset(args.names[0], root, split_file=args.split_file, **kw)]
        else:
            reports = verify_root(root, args.names or None, **kw)
    except ValueError as err:
        raise SystemExit(f"{PROG}: error: {err}")
    if not reports:
        raise SystemExit(f"{PROG}: error: no dataset folder found under {root} (names: datasets/README.md); "
                         f"name the datasets to check, or fetch one: ssp-data download dtd --root {root}")
    for report in reports:
        print(report.line())
        for line in report.details():
            print(line)
    if args.json:
        _write_json(args.json, [r.as_dict() for r in reports], "--json")
    bad = [r.name for r in reports if not r.ok]
    if bad:
        print(f"{PROG}: not ready: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


def _splits(args) -> int:
    from ssp._io import file_sha256
    from ssp.data import DatasetNotFoundError, get_dataset
    from ssp.data.manifest import draw_manifest
    from ssp.data.verify import split_path

    policy = args.val_policy
    if policy not in ("coop", "full"):
        try:
            policy = int(policy)
        except ValueError:
            policy = 0
        if policy < 1:
            raise SystemExit(f"{PROG}: error: --val-policy must be coop, full or a positive integer, "
                             f"got {args.val_policy!r}")
    _output_file(args.output, "-o/--output")
    try:
        ds = get_dataset(args.dataset, args.root, split_file=args.split_file, check_files=False)
    except (DatasetNotFoundError, ValueError) as err:
        raise SystemExit(f"{PROG}: error: {str(err).splitlines()[0]}")
    split = split_path(ds.name, Path(ds.root), args.split_file) if ds.name != "imagefolder" else None
    digest = file_sha256(split) if split is not None and split.is_file() else None
    manifest = draw_manifest(ds, list(dict.fromkeys(args.shots)), list(dict.fromkeys(args.seeds)),
                             val_policy=policy, split_file_sha256=digest)
    out = _write_json(args.output, manifest, "-o/--output")
    print(f"{ds.name}: {len(manifest['draws'])} draw(s) ({', '.join(str(k) for k in args.shots)} shots x seeds "
          f"{', '.join(str(s) for s in args.seeds)}), sha256 {manifest['sha256']} -> {out}")
    return 0


def _list(_args) -> int:
    from ssp.data.catalog import list_sources, mirror_url

    print(f"{'dataset':<15} {'images':<36} split file (sha256)")
    for s in list_sources():
        how = (", ".join(r.filename for r in s.resources) if s.fetchable else "manual (see download)")
        if s.split is None:
            split = s.split_note.split(":")[0]
        else:
            split = f"{s.split.filename} ({s.split.sha256[:12] + '...' if s.split.sha256 else 'no digest pinned'})"
        print(f"{s.name:<15} {how[:36]:<36} {split}")
    base = mirror_url()
    if base:
        print(f"\nmirror in use: {base}")
    return 0


_COMMANDS = {"download": _download, "verify": _verify, "splits": _splits, "list": _list}


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; rerun the same command to resume (partial downloads are kept)",
              file=sys.stderr)
        return 130


main = with_cli_messages(_main)

if __name__ == "__main__":
    sys.exit(main())

"""``ssp-reproduce``: a resumable suite of few-shot runs, datasets x backbones x shots x seeds x
methods, from images or from Tip-Adapter cache folders, into one output tree.

Examples::

    ssp-reproduce --features-root caches/ --datasets stanford_cars caltech101 --test-from-val 0.5 \\
        --output runs/suite
    ssp-reproduce --paper ape --features-root caches/ --test-from-val 0.5 --output runs/ape --dry-run
    ssp-reproduce --root DATA --datasets dtd oxford_pets --backbones RN50 ViT-B-32 --output runs/suite

Every run is one JSON under ``--output`` keyed by its settings (:mod:`ssp.run.records`); a run
whose JSON exists with the same settings is skipped, so an interrupted suite resumes where it
stopped and a second identical call does no work. Runs with other settings go to other keys:
nothing is overwritten. Two suites started on one output folder share the work (a lock file per
run). Each (dataset, backbone) is one :func:`ssp.run.pipeline.run_fewshot` call on an
:class:`~ssp.run.sources.ImageSource` or a :class:`~ssp.run.cache_source.TipCacheSource`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ssp._checks import is_random_weights
from ssp.cli._args import fail, random_weights_banner, with_cli_messages
from ssp.cli.fewshot import (
    add_common_arguments,
    config_overrides,
    note_ignored_config_keys,
    refuse_image_flags,
)
from ssp.report.published import PAPER_PRESETS
from ssp.run.config import builtin_config_names, load_config

# The run stage's sources, loop and records (torch, open_clip) and the report are imported inside the
# functions that use them, after parsing: `ssp-reproduce --help` and `--dry-run` plans stay fast.

PROG = "ssp-reproduce"


# ---------------------------------------------------------------------- published numbers


def _preset(name: str, track: str = "fewshot") -> dict:
    """The methods, shots, datasets, backbone, published sources, protocol and note of a paper's
    tables (``track``: fewshot, base2new, shift; :func:`ssp.report.published.paper_preset`). Methods
    ssp cannot run (not in the method registry) are dropped and listed in ``skipped_methods``."""
    from dataclasses import asdict

    from ssp.methods.registry import canonical_name
    from ssp.report.published import paper_preset

    preset = asdict(paper_preset(name, track))
    runnable, skipped = [], []
    for m in preset["methods"]:
        try:
            runnable.append(canonical_name(m))
        except ValueError:
            skipped.append(m)
    preset["methods"], preset["skipped_methods"] = runnable, skipped
    return preset


def _published_value(preset: dict | None, dataset: str, method: str, shots: int, backbone: str | None):
    """The published accuracy a cell is compared against (shown by ``--dry-run``), for the
    published ``backbone`` the job's runs are compared with (None: nothing compared): X+ssp is
    compared against X's published number (no SSP paper numbers are available)."""
    if preset is None or backbone is None or preset.get("protocol", "fewshot") != "fewshot" or preset.get("eval_on"):
        return None  # base-to-new / shift: compared after the runs (comparison-<protocol>.md)
    from ssp.report.published import baseline_method, published_value

    return published_value(baseline_method(method), dataset, shots, backbone=backbone,
                           source=tuple(preset["sources"]) or None)


def _cache_backbone_check(job: "Job") -> None:
    """A cache labelled with a backbone (``--backbones RN50``) must hold that backbone's feature
    width: a 512-d cache labelled RN50 (1024-d) would be compared with RN50's published numbers."""
    if not job.backbone or job.source is None:
        return
    try:
        import open_clip

        config = open_clip.get_model_config(job.backbone.split("@")[0])
    except Exception:  # noqa: BLE001  (an unknown name is a free label: nothing to check)
        config = None
    width = (config or {}).get("embed_dim")
    if width is not None and int(width) != int(job.source.dim):
        raise ValueError(f"--backbones {job.backbone}: the cache folder {job.source.folder} holds "
                         f"{job.source.dim}-d features, but {job.backbone}'s are {width}-d; label the cache "
                         "with the backbone that made it (or leave --backbones out: nothing is then compared)")


def _compared_backbone(job: "Job", args) -> str | None:
    """The published backbone a job's runs are put beside (see :func:`ssp.report.published.compared_backbone`):
    the backbone of its images, or the label of its caches (``--backbones``); None for an unlabelled cache."""
    from ssp.report.published import compared_backbone

    if args.features_root:
        return compared_backbone(job.backbone)
    return compared_backbone(job.backbone or (job.cfg or {}).get("backbone"))


def _suite_report(records: list[dict], output_dir: Path, *, paper: str | None = None, track: str = "fewshot") -> str:
    """Tables and plots of the whole output tree: the per-dataset report
    (:func:`ssp.report.tables.write_report`) and the comparison with the published numbers
    (:func:`ssp.report.comparison.write_comparison`: Markdown, CSV, JSON and a PNG per backbone), one
    comparison per protocol (runs of different settings are never averaged together). Returns
    the printed text. ``records`` (the runs of this invocation) are already in the tree."""
    from ssp.report.comparison import write_comparison
    from ssp.report.tables import load_runs, write_report

    table, _ = write_report(output_dir)
    runs = load_runs(output_dir)
    if paper and track != "fewshot":
        from ssp.report.protocol_comparison import write_protocol_comparison

        preset = _preset(paper, track)
        wanted = [r for r in runs if (r.get("protocol_name") == "base2new") == (track == "base2new")
                  and bool(r.get("eval_on")) == (track == "shift")]
        written = write_protocol_comparison(wanted, output_dir, preset["sources"][0])
        return "\n\n".join([table, written["markdown"].read_text(),
                             "written: " + ", ".join(str(p) for p in written.values())])
    by_protocol: dict[str, list[dict]] = {}
    for r in runs:
        by_protocol.setdefault(str(r.get("protocol_key", "")), []).append(r)
    sources = tuple(_preset(paper).get("sources", ())) or None if paper else None
    parts = [table]
    for key, group in sorted(by_protocol.items()):
        basename = "comparison" if len(by_protocol) == 1 else f"comparison-{key}"
        written = write_comparison(group, output_dir, sources=sources, basename=basename)
        parts.append(written["markdown"].read_text())
        parts.append("written: " + ", ".join(str(p) for p in
                                             [written["markdown"], written["csv"], written["json"],
                                              *written["plots"]]))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------- planning


@dataclass
class Job:
    """One (dataset, backbone) of the suite: its config, source and the runs to do / done."""

    dataset: str
    backbone: str | None              # images: the open_clip model; caches: a label or None
    cfg: dict | None = None
    source: object | None = None      # ssp.run.sources.ImageSource / ssp.run.cache_source.TipCacheSource
    label: str = ""
    todo: list[tuple[int, int, str]] = field(default_factory=list)
    done: list[tuple[int, int, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one-line reasons
    error: str | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run a resumable suite of few-shot runs (datasets x backbones x shots x seeds x methods) "
                    "from images (--root) or Tip-Adapter cache folders (--features-root) into one "
                    "output tree, then write the tables and plots. Finished runs (same settings) are skipped.")
    p.add_argument("--paper", choices=sorted(PAPER_PRESETS), metavar="PAPER",
                   help=f"select the methods, shots and datasets of a paper's tables ({', '.join(PAPER_PRESETS)}) "
                        "and list the published value of each cell; --datasets / --shots / --methods still override")
    p.add_argument("--track", choices=["fewshot", "base2new", "shift"], default="fewshot",
                   help="with --paper: which of its tables (fewshot, base2new: the base-to-new protocol, shift: "
                        "16-shot ImageNet -> ImageNet-V2 / Sketch / A / R); default fewshot")
    p.add_argument("--datasets", nargs="+", help=f"datasets (configs ship for: {', '.join(builtin_config_names())})")
    p.add_argument("--backbones", nargs="+", help="open_clip backbones for --root (default: the config's); with "
                                                  "--features-root, one label for the caches' backbone")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--root", help="folder holding the dataset folders (images)")
    src.add_argument("--features-root", metavar="DIR",
                     help="folder holding one Tip-Adapter cache folder per dataset (DIR/<dataset>/)")
    add_common_arguments(p)
    p.add_argument("--output", help="the suite's output tree (required unless --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="list what would run and what is already done; run nothing")
    return p


def _plan(args: argparse.Namespace, preset: dict | None) -> list[Job]:
    overrides = config_overrides(args, PROG)
    if args.track != "fewshot" and not preset:
        raise ValueError(f"--track {args.track} selects a paper's table: add --paper NAME")
    if preset and preset.get("eval_on") and args.features_root:
        raise ValueError(f"--track {args.track} scores the ImageNet variants' images: it needs --root (images), "
                         "not --features-root")
    for key in ("shots", "methods", "seeds"):
        if overrides.get(key) is None and preset and preset.get(key) is not None:
            overrides[key] = list(preset[key])
    if preset and preset.get("prompts") and overrides.get("prompts") is None and args.root:
        overrides["prompts"] = preset["prompts"]   # the paper's text (images only)
    datasets = args.datasets or (list(preset["datasets"]) if preset else None)
    if not datasets:
        raise ValueError("choose the datasets: --datasets NAME ... or --paper NAME")
    unknown = [d for d in datasets if d not in builtin_config_names()]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; configs ship for: {', '.join(builtin_config_names())}")
    if args.features_root and args.backbones and len(args.backbones) > 1:
        raise ValueError("--features-root: the caches fix the backbone; give at most one --backbones label")
    jobs = []
    for dataset in dict.fromkeys(datasets):
        backbones = args.backbones or ([preset["backbone"]] if preset and preset.get("backbone")
                                       and args.root else [None])
        for backbone in (backbones if not args.features_root else backbones[:1]):
            job = Job(dataset=dataset, backbone=backbone)
            jobs.append(job)
            try:
                cfg = load_config(dataset, args.config, {**overrides, "backbone": None if args.features_root
                                                         else backbone})
                job.cfg = cfg
                if args.features_root:
                    _plan_features(job, args)
                elif args.root:
                    _plan_images(job, args)
                else:  # --dry-run without a source: what would run, nothing checked
                    job.label = backbone or str(cfg["backbone"])
                    job.todo = [(k, s, m) for k in cfg["shots"] for s in cfg["seeds"] for m in cfg["methods"]]
            except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as err:
                job.error = str(err)
    return jobs


def _split_done(job: Job, args, methods: list[str]) -> None:
    from ssp.run.pipeline import plan_runs
    from ssp.run.records import find_run

    for key, stub in plan_runs(job.cfg, job.source, methods, args.protocol).items():
        done = args.output is not None and find_run(args.output, stub) is not None
        (job.done if done else job.todo).append(key)


def _plan_features(job: Job, args) -> None:
    from ssp.run.sources import make_source

    folder = Path(args.features_root) / job.dataset
    if not folder.is_dir():
        job.skipped.append(f"no Tip-Adapter cache folder {folder}")
        return
    source = make_source(job.cfg, features=folder, test_from_val=args.test_from_val, backbone_name=job.backbone,
                         device=args.device, check_shots=False)
    job.source, job.label = source, source.label
    _cache_backbone_check(job)
    missing = [k for k in job.cfg["shots"] if k not in source.shots]
    if missing:
        job.skipped.append(f"no keys_<K>shots.pt for shots {missing} in {folder}")
        job.cfg = {**job.cfg, "shots": [k for k in job.cfg["shots"] if k in source.shots]}
    methods, reasons = source.runnable(job.cfg["methods"])
    job.skipped.extend(reasons)
    _split_done(job, args, methods)


def _plan_images(job: Job, args) -> None:
    from ssp.run.sources import make_source

    source = make_source(job.cfg, root=args.root, store_dir=args.feature_store, device=args.device,
                         recompute=args.recompute, progress=not args.no_progress, eval_on=list(args.eval_on))
    job.source, job.label = source, source.label
    _split_done(job, args, source.runnable(job.cfg["methods"])[0])


def _describe(job: Job, paper: dict | None, args) -> list[str]:
    head = f"{job.dataset} | {job.label or job.backbone or '-'}"
    if job.error:
        return [f"{head}: ERROR {job.error}"]
    lines = [f"{head}: {len(job.todo)} to run, {len(job.done)} done"]
    lines += [f"  {reason}" for reason in job.skipped]
    compared = _compared_backbone(job, args) if paper else None
    if paper and (job.todo or job.done):
        if compared is None:
            lines.append(f"  published numbers ({paper['backbone']}) not compared: "
                         + (f"the cache's backbone is not labelled ({job.source.dim}-d features); pass "
                            f"--backbones NAME when the cache holds NAME's features"
                            if args.features_root and job.source is not None else
                            f"no published numbers for {job.label or job.backbone}"))
        else:
            lines.append(f"  compared with the published {compared} numbers"
                         + ("" if compared == paper["backbone"] else
                            f" (the paper's tables are {paper['backbone']}: cells it does not publish show -)"))
    for state, runs in (("run ", job.todo), ("done", job.done)):
        by_method: dict[tuple[str, int], list[int]] = {}
        for k, s, m in runs:
            by_method.setdefault((m, k), []).append(s)
        for (m, k), seeds in sorted(by_method.items(), key=lambda x: (x[0][0], x[0][1])):
            value = _published_value(paper, job.dataset, m, k, compared)
            published = "" if value is None else f"  (published {value:.2f})"
            lines.append(f"  {state} {m:<16} {k:>2}-shot seeds {sorted(seeds)}{published}")
    return lines


# ---------------------------------------------------------------------- running


def _execute(job: Job, args) -> list[dict]:
    from ssp.run.pipeline import run_fewshot

    return run_fewshot(job.cfg, job.source, output_dir=args.output, resume=True, progress=not args.no_progress,
                       protocol=args.protocol)


def _looked_for(args, jobs: list[Job]) -> str:
    where = (f"Tip-Adapter cache folders {args.features_root}/<dataset>/" if args.features_root
             else f"datasets under {args.root}")
    return f"{where} for {', '.join(dict.fromkeys(j.dataset for j in jobs))}"


def _main(argv: list[str] | None = None) -> int:
    from ssp.run.pipeline import Interrupted
    from ssp.run.records import check_writable

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(levelname)s: %(message)s")
    logging.getLogger("ssp").setLevel(logging.INFO)
    if not args.root and not args.features_root and not args.dry_run:
        raise SystemExit(f"{PROG}: error: choose a source: --root DIR (images) or --features-root DIR "
                         "(one Tip-Adapter cache folder per dataset)")
    if not args.output and not args.dry_run:
        raise SystemExit(f"{PROG}: error: --output DIR is required (the suite's output tree); a --dry-run "
                         "plan needs none")
    if args.features_root:
        refuse_image_flags(args, PROG, "--features-root")
        note_ignored_config_keys(args.config, PROG)
    if args.test_from_val is not None and not args.features_root:
        raise SystemExit(f"{PROG}: error: --test-from-val applies to Tip-Adapter cache folders; add --features-root DIR")
    for flag, folder in (("--root", args.root), ("--features-root", args.features_root)):
        if folder and not Path(folder).expanduser().is_dir():
            raise SystemExit(f"{PROG}: error: {flag} {folder}: no such folder")
    try:
        if args.output and not args.dry_run:
            check_writable(args.output)
        preset = _preset(args.paper, args.track) if args.paper else None
        if args.track != "fewshot" and not preset:
            raise ValueError(f"--track {args.track} selects a paper's table: add --paper NAME")
        args.protocol = preset["protocol"] if preset else "fewshot"
        args.eval_on = tuple(preset["eval_on"]) if preset else ()
        jobs = _plan(args, preset)
    except (ValueError, FileNotFoundError, PermissionError, NotADirectoryError) as err:
        raise fail(PROG, err, args.debug)
    output = Path(args.output) if args.output else None
    n_todo = sum(len(j.todo) for j in jobs if not j.error)
    n_done = sum(len(j.done) for j in jobs if not j.error)
    if preset and preset.get("note"):
        print(f"[{PROG}] --paper {args.paper}: {preset['note']}")
    if preset and preset.get("skipped_methods"):
        print(f"[{PROG}] --paper {args.paper}: not runnable in this ssp, skipped: {', '.join(preset['skipped_methods'])}")
    if args.dry_run:
        if not args.root and not args.features_root:
            print(f"[{PROG}] no --root / --features-root: listing the plan; nothing is checked for being done")
        for job in jobs:
            print("\n".join(_describe(job, preset, args)))
        where = f" under {output}" if output else ""
        print(f"\n[{PROG}] dry run: {n_todo} run(s) to do, {n_done} already done{where}")
        if (args.root or args.features_root) and n_todo + n_done == 0:
            print(f"[{PROG}] error: no runs planned: found nothing to run among the {_looked_for(args, jobs)}",
                  file=sys.stderr)
            return 1
        return 1 if any(j.error for j in jobs) else 0
    for job in jobs:
        for reason in job.skipped:
            print(f"[{PROG}] {job.dataset}: {reason}")
        if job.error:
            print(f"[{PROG}] {job.dataset}: error: {job.error}", file=sys.stderr)
    if n_todo + n_done == 0:
        raise SystemExit(f"{PROG}: error: no runs planned: found nothing to run among the "
                         f"{_looked_for(args, jobs)}; check the folder (see datasets/README.md for the layouts)")
    if n_todo == 0:
        print(f"[{PROG}] nothing to do: all {n_done} run(s) are already done under {output} (same settings)")
        if n_done and not (output / "results.md").is_file():
            print(_suite_report([], output, paper=args.paper, track=args.track))
        return 1 if any(j.error for j in jobs) else 0
    print(f"[{PROG}] {n_todo} run(s) to do, {n_done} already done under {output}")
    records: list[dict] = []
    completed = 0
    failed = [j for j in jobs if j.error]
    # one banner for the whole suite, when a randomly initialised backbone is first loaded
    random = args.root is not None and any(is_random_weights(j.cfg.get("pretrained")) for j in jobs if j.cfg)
    try:
        with random_weights_banner(random):
            for job in jobs:
                if job.error or not job.todo:
                    continue
                try:
                    job_records = _execute(job, args)
                except Interrupted:
                    raise
                except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as err:
                    if args.debug:
                        raise
                    job.error = str(err)
                    failed.append(job)
                    print(f"[{PROG}] {job.dataset} ({job.label}): error: {err}", file=sys.stderr)
                    continue
                records += job_records
                completed += len(job.todo)
    except Interrupted as err:
        print(f"\n[{PROG}] interrupted; {completed + err.completed} run(s) finished in this call and saved under "
              f"{output}: rerun the same command to resume", file=sys.stderr)
        return 130
    table = _suite_report(records, output, paper=args.paper, track=args.track)
    print()
    print(table)
    print(f"\n[{PROG}] {n_todo} run(s) done now, {n_done} reused; results under {output}")
    if failed:
        print(f"[{PROG}] error: {len(failed)} dataset(s) failed: "
              + "; ".join(f"{j.dataset}: {j.error}" for j in failed), file=sys.stderr)
        return 1
    return 0


main = with_cli_messages(_main)

if __name__ == "__main__":
    sys.exit(main())

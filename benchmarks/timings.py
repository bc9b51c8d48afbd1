"""The times README.md and docs/ state, measured by one command on one machine and written into
their marked blocks, each with the machine beside it (CPU model, cores, load average).

A timings block in a page::

    <!-- timings: NAME -->
    (written by this script)
    <!-- /timings -->

    python3 benchmarks/timings.py              # measure everything (~4 min on a quiet 2-core machine), rewrite
    python3 benchmarks/timings.py --only demo  # measure one, keep the others' stored figures
    python3 benchmarks/timings.py --render     # rewrite the blocks from docs/timings.json (no measuring)
    python3 benchmarks/timings.py --check      # exit 1 where a block differs from what docs/timings.json renders

Measurements (each a real subprocess; wall time, the child's CPU time, the 1-minute load average
before and after):

* ``demo``: README command 2 from an empty feature store (temporary output and store folders).
* ``cars``: ``benchmarks/stanford_cars_real_features.py --split numpy --threads 2`` (every shot
  count): the per-method fit / search / predict seconds it reports, and its own wall / CPU time.
* ``imagenet-baselines``: ``benchmarks/bench_training_free.py --threads 2`` (GDA and ProKeR at
  ImageNet size, synthetic data: fit, the full default search, predict, peak memory; ~18 min).
* ``proker-solvers``: the same with one β, ProKeR's two search solvers side by side (~8 min).
* ``reliability``: ``benchmarks/bench_reliability.py --threads 2`` (the reliability metrics of an
  ImageNet-size test split, in row blocks and in one block): seconds and peak memory.

The figures go to ``docs/timings.json`` (committed: the single source of every stated time), and
every block of README.md and docs/*.md is rendered from it. Wall time depends on what else the
machine runs; CPU time much less: the blocks give both, and the README a range.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "docs" / "timings.json"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- timings: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /timings -->)", re.S)
DATA = os.environ.get("SSP_DATA_ROOT", str(REPO.parent / "shared" / "data"))

# README command 2 (tests/test_readme.py checks the README shows this command)
DEMO = ["-m", "ssp.cli.fewshot", "--dataset", "dtd", "--root", f"{DATA}/coop", "--shots", "1", "2", "--seeds", "1",
        "--backbone", "ViT-B-32", "--pretrained", "none", "--device", "cpu", "--views", "2", "--no-progress"]
CARS = ["benchmarks/stanford_cars_real_features.py", "--split", "numpy", "--threads", "2"]
RELIABILITY = ["benchmarks/bench_reliability.py", "--threads", "2"]
IMAGENET = ["benchmarks/bench_training_free.py", "--threads", "2"]
SOLVERS = [*IMAGENET, "--methods", "proker", "--beta", "1", "--search-solver", "eigh", "cholesky"]


# ------------------------------------------------------------------------------------- measuring


def machine() -> dict:
    """CPU model, cores (usable / online), memory, OS, Python, the ssp commit."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = round(pages * size / 2**30)
    except (ValueError, OSError, AttributeError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"cpu": model, "cores": usable, "cpus_online": os.cpu_count(), "memory_gib": memory,
            "system": f"{platform.system()} {platform.machine()}", "python": platform.python_version(),
            "commit": commit.stdout.strip() or None}


def timed(argv: list[str], *, label: str) -> dict:
    """Run ``python3 argv`` in the repository root; wall and CPU seconds, load averages, exit code."""
    before = os.getloadavg()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = os.getloadavg()
    if done.returncode != 0:
        raise SystemExit(f"{label}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    cpu = (after_usage.ru_utime - usage.ru_utime) + (after_usage.ru_stime - usage.ru_stime)
    print(f"{label}: {wall:.1f} s wall, {cpu:.1f} s CPU, load {before[0]:.1f} -> {after[0]:.1f}", file=sys.stderr)
    return {"command": "python3 " + " ".join(argv), "machine": machine(), "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "load_before": [round(v, 2) for v in before], "load_after": [round(v, 2) for v in after],
            "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "stdout": done.stdout}


def measure_demo() -> dict:
    with tempfile.TemporaryDirectory(prefix="ssp-timings-") as tmp:
        out = timed([*DEMO, "--output", f"{tmp}/runs", "--feature-store", f"{tmp}/store"], label="demo")
    out.pop("stdout")
    out["command"] = out["command"].replace(tmp, "TMP")
    return out


def measure_cars(shots: list[int] | None = None) -> dict:
    extra = ["--shots", *map(str, shots)] if shots else []
    with tempfile.TemporaryDirectory(prefix="ssp-timings-") as tmp:
        out = timed([*CARS, *extra, "--json", f"{tmp}/cars.json"], label="cars")
        rows = json.loads(Path(tmp, "cars.json").read_text())["rows"]
    out.pop("stdout")
    out["command"] = out["command"].split(" --json")[0]
    keep = ("tip_search_s", "ape_search_s", "lpp_fit_s", "lpp_predict_s", "probe_fit_s", "probe_predict_s")
    out["rows"] = [{"shots": r["shots"], **{k: round(r[k], 3) for k in keep},
                    **{f"{m}_{k}": round(r[f"{m}_details"][k], 3) for m in ("gda", "proker")
                       for k in ("fit_s", "search_s", "predict_s")}} for r in rows]
    return out


def measure_reliability() -> dict:
    with tempfile.TemporaryDirectory(prefix="ssp-timings-") as tmp:
        out = timed([*RELIABILITY, "--json", f"{tmp}/rel.json"], label="reliability")
        result = json.loads(Path(tmp, "rel.json").read_text())
    out.pop("stdout")
    out["command"] = out["command"].split(" --json")[0]
    out.update({k: result[k] for k in ("test", "val", "classes")})
    out["rows"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in result["rows"]]
    return out


def _measure_bench(argv: list[str], label: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="ssp-timings-") as tmp:
        out = timed([*argv, "--json", f"{tmp}/bench.json"], label=label)
        result = json.loads(Path(tmp, "bench.json").read_text())
    out.pop("stdout")
    out["command"] = out["command"].split(" --json")[0]
    keep = ("method", "n_samples", "grid_points", "best_params", "fit_s", "search_s", "predict_s", "n_test",
            "peak_rss_gib", "data_rss_gib")
    out["rows"] = [{k: (round(r[k], 3) if isinstance(r[k], float) else r[k]) for k in keep} for r in result["rows"]]
    return out


MEASURE = {"demo": measure_demo, "cars": measure_cars, "reliability": measure_reliability,
           "imagenet-baselines": lambda: _measure_bench(IMAGENET, "imagenet-baselines"),
           "proker-solvers": lambda: _measure_bench(SOLVERS, "proker-solvers")}


# ------------------------------------------------------------------------------------- rendering


def machine_line(figures: dict, run: dict) -> str:
    m = run["machine"]
    memory = f", {m['memory_gib']} GiB" if m.get("memory_gib") else ""
    return (f"measured {run['when'][:10]} by `python3 benchmarks/timings.py` on {m['cpu']} ({m['cores']} cores"
            f"{memory}), load average {run['load_before'][0]:.1f} before and {run['load_after'][0]:.1f} after "
            f"(1 minute; above {m['cores']} the machine was shared)")


def _s(value: float) -> str:
    return f"{value:.2f} s" if value < 1 else f"{value:.1f} s" if value < 100 else f"{value:.0f} s"


def _row(figures: dict, shots: int) -> dict:
    return next(r for r in figures["cars"]["rows"] if r["shots"] == shots)


def render_demo(figures: dict) -> str:
    run = figures["demo"]
    cores = run["machine"]["cores"]
    return (f"Command 2 took {_s(run['wall_s'])} of wall time and {_s(run['cpu_s'])} of CPU time from an empty "
            f"feature store ({machine_line(figures, run)}). Wall time is what load changes: on a quiet "
            f"{cores}-core machine expect about {_s(run['cpu_s'] / cores)} to {_s(run['cpu_s'])} (its CPU time "
            f"spread over {cores} cores, or on one), longer on a busy one.\n")


def render_cars(figures: dict) -> str:
    run, r = figures["cars"], _row(figures, 16)
    total = lambda m: r[f"{m}_fit_s"] + r[f"{m}_search_s"] + r[f"{m}_predict_s"]  # noqa: E731
    shots = [row["shots"] for row in run["rows"]]
    whole = ("the whole benchmark (1 to 16 shots)" if shots == [1, 2, 4, 8, 16] else
             f"the benchmark's {', '.join(map(str, shots))}-shot part (`{run['command']}`)")
    return (f"At 16 shots, fit + validation search + predict took {_s(total('gda'))} (GDA), "
            f"{_s(total('proker'))} (ProKeR, 5 β x 11 λ), {_s(r['lpp_fit_s'] + r['lpp_predict_s'])} (LP++, "
            f"300 full-batch steps) and {_s(r['probe_fit_s'] + r['probe_predict_s'])} (linear probe, the C "
            f"path); {whole} {_s(run['wall_s'])} of wall time, "
            f"{_s(run['cpu_s'])} of CPU time ({machine_line(figures, run)}).\n")


def render_cars_baselines(figures: dict) -> str:
    run = figures["cars"]
    lines = [f"Seconds per shot count ({machine_line(figures, run)}; `{run['command']}`):", "",
             "| shots | GDA fit / search / predict | ProKeR fit / search / predict | LP++ fit / predict "
             "| linear probe C path / predict | Tip-Adapter / APE search |",
             "|---|---|---|---|---|---|"]
    for r in run["rows"]:
        lines.append(f"| {r['shots']} | {r['gda_fit_s']:.2f} / {r['gda_search_s']:.2f} / {r['gda_predict_s']:.2f} "
                     f"| {r['proker_fit_s']:.2f} / {r['proker_search_s']:.2f} / {r['proker_predict_s']:.2f} "
                     f"| {r['lpp_fit_s']:.1f} / {r['lpp_predict_s']:.3f} | {r['probe_fit_s']:.1f} / "
                     f"{r['probe_predict_s']:.3f} | {r['tip_search_s']:.2f} / {r['ape_search_s']:.2f} |")
    return "\n".join(lines) + "\n"


def render_ape_grid(figures: dict) -> str:
    run, r = figures["cars"], _row(figures, 16)
    return (f"On real CLIP ViT-B/32 StanfordCars features (16 shots) the full APE grid took "
            f"{_s(r['ape_search_s'])} ({machine_line(figures, run)}).\n")


def render_reliability(figures: dict) -> str:
    run = figures["reliability"]
    lines = [f"`{run['command']}` ({run['test']:,} test and {run['val']:,} validation images, {run['classes']:,} "
             f"classes, synthetic logits; each setting in its own process; {machine_line(figures, run)}):", "",
             "| rows | time | peak RSS | added by the metrics |", "|---|---|---|---|"]
    names = {"blocks": "in blocks (default)", "one block": "one block (the whole array at once)"}
    for r in run["rows"]:
        lines.append(f"| {names.get(r['rows'], r['rows'])} | {_s(r['seconds'])} | {r['peak_gib']:.2f} GiB "
                     f"| {r['added_gib']:.2f} GiB |")
    return "\n".join(lines) + "\n"


def render_imagenet_baselines(figures: dict) -> str:
    run = figures["imagenet-baselines"]
    lines = [f"`{run['command']}` ({_s(run['wall_s'])} in all; {machine_line(figures, run)}):", "",
             "| method | N (samples) | fit s | full default search s (points) | predict s (10,000 queries) "
             "| peak RSS GiB (data alone) |", "|---|---|---|---|---|---|"]
    for r in run["rows"]:
        name = {"gda": "GDA (10 views)"}.get(r["method"], r["method"].replace("proker", "ProKeR"))
        lines.append(f"| {name} | {r['n_samples']:,} | {r['fit_s']:.1f} | {r['search_s']:.1f} ({r['grid_points']}) "
                     f"| {r['predict_s']:.1f} | {r['peak_rss_gib']:.2f} ({r['data_rss_gib']:.2f}) |")
    return "\n".join(lines) + "\n"


def render_proker_solvers(figures: dict) -> str:
    run = figures["proker-solvers"]
    eigh, chol = (next(r for r in run["rows"] if f"({name})" in r["method"]) for name in ("eigh", "cholesky"))
    return (f"Side by side in one run, one β and the default 11 λ (`{run['command']}`; "
            f"{machine_line(figures, run)}): `eigh` {_s(eigh['search_s'])} and {eigh['peak_rss_gib']:.2f} GiB, "
            f"`cholesky` {_s(chol['search_s'])} and {chol['peak_rss_gib']:.2f} GiB "
            f"(**{eigh['search_s'] / chol['search_s']:.2f}x faster, "
            f"{eigh['peak_rss_gib'] - chol['peak_rss_gib']:.1f} GiB less**), "
            + (f"both choosing {_params(chol['best_params'])}" if eigh["best_params"] == chol["best_params"] else
               f"choosing {_params(eigh['best_params'])} and {_params(chol['best_params'])}") + ".\n")


def _params(params: dict) -> str:
    return ", ".join(f"{k} = {v:g}" if isinstance(v, (int, float)) else f"{k} = {v}" for k, v in params.items())


RENDER = {"demo": render_demo, "imagenet-baselines": render_imagenet_baselines,
          "proker-solvers": render_proker_solvers, "cars": render_cars, "cars-baselines": render_cars_baselines,
          "ape-grid": render_ape_grid, "reliability": render_reliability}


def render_pages(figures: dict, pages: list[Path] | None = None) -> dict[Path, str]:
    """Every page with its blocks rendered from ``figures`` (unknown block names are an error)."""
    out = {}
    for page in pages or PAGES:
        text = page.read_text()

        def fill(m: re.Match) -> str:
            name = m.group("name")
            if name not in RENDER:
                raise SystemExit(f"{page}: unknown timings block {name!r}; known: {sorted(RENDER)}")
            return m.group(1) + RENDER[name](figures) + m.group(4)

        out[page] = BLOCK.sub(fill, text)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=sorted(MEASURE), help="measure these only")
    p.add_argument("--render", action="store_true", help="rewrite the blocks from docs/timings.json only")
    p.add_argument("--cars-shots", type=int, nargs="+", help="measure the StanfordCars benchmark at these shot "
                   "counts only (default: all; 16 must be among them)")
    p.add_argument("--check", action="store_true", help="exit 1 where a block is not what docs/timings.json renders")
    args = p.parse_args(argv)
    figures = json.loads(STORE.read_text()) if STORE.is_file() else {}
    if args.check:
        stale = [str(page.relative_to(REPO)) for page, text in render_pages(figures).items()
                 if text != page.read_text()]
        if stale:
            print(f"timings blocks differ from docs/timings.json in: {', '.join(stale)}; "
                  "run python3 benchmarks/timings.py --render", file=sys.stderr)
        return 1 if stale else 0
    if not args.render:
        for name in args.only or MEASURE:
            figures[name] = measure_cars(args.cars_shots) if name == "cars" else MEASURE[name]()
            # stored at once, merged into the file as it is now (another measurement may run beside)
            stored = json.loads(STORE.read_text()) if STORE.is_file() else {}
            stored[name] = figures[name]
            STORE.write_text(json.dumps(stored, indent=2) + "\n")
        figures = json.loads(STORE.read_text())
    for page, text in render_pages(figures).items():
        if text != page.read_text():
            page.write_text(text)
            print(f"rewrote {page.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

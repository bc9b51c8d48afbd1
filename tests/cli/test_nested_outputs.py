"""Issue 27 item 1: an output folder nested inside another (``runs/demo`` inside ``runs``) is its own
report's, never read as duplicates by the outer folder's report."""
from __future__ import annotations

import json

from _cli import run_cli
from _tip_cache_folder import write_tip_cache


def _fewshot(cache, output, *extra):
    return run_cli("ssp.cli.fewshot", "--features", cache, "--dataset", "dtd", "--shots", "1", "--seeds", "1",
                   "--methods", "zero-shot", "tip-adapter", "--no-progress", "--output", output, *extra)


def test_nested_output_folder_sequence(tmp_path):
    cache = write_tip_cache(tmp_path / "cache")
    runs = tmp_path / "runs"
    first = _fewshot(cache, runs)
    assert first.returncode == 0, first.stderr
    demo = _fewshot(cache, runs / "demo")  # the same runs, filed in a folder inside the first one
    assert demo.returncode == 0, demo.stderr
    assert (runs / "demo" / "results.md").is_file()
    before = (runs / "results.md").stat().st_mtime_ns

    again = _fewshot(cache, runs)
    assert again.returncode == 0, again.stderr
    assert "already done" in again.stdout and "duplicates" not in again.stderr
    assert (runs / "results.md").stat().st_mtime_ns > before  # the report was rebuilt, not left stale
    summary = json.loads((runs / "summary.json").read_text())
    assert {r["method"] for r in summary["test"]} == {"zero-shot", "tip-adapter"}
    assert all(r["seeds"] == [1] for r in summary["test"])

    report = run_cli("ssp.cli.fewshot", "--report-only", "--output", runs)
    assert report.returncode == 0, report.stderr
    assert "tip-adapter" in report.stdout
    nested = run_cli("ssp.cli.fewshot", "--report-only", "--output", runs / "demo")
    assert nested.returncode == 0 and "tip-adapter" in nested.stdout


def test_a_run_file_off_its_place_is_not_read_and_is_named(tmp_path, caplog):
    cache = write_tip_cache(tmp_path / "cache")
    runs = tmp_path / "runs"
    assert _fewshot(cache, runs).returncode == 0
    (path,) = runs.rglob("zero-shot/*/1shot_seed1.run.json")
    (runs / "old").mkdir()
    (runs / "old" / "copy.run.json").write_text(path.read_text())  # a hand-made copy: the same run twice
    with caplog.at_level("INFO", logger="ssp.report"):
        done = run_cli("ssp.cli.fewshot", "--report-only", "--output", runs)
    assert done.returncode == 0, done.stderr
    assert "duplicates" not in done.stderr
    assert "1 run file(s) of other output folders" in caplog.text and str(runs / "old") in caplog.text
    summary = json.loads((runs / "summary.json").read_text())
    assert [r["seeds"] for r in summary["test"]] == [[1], [1]]


def test_report_of_a_folder_holding_only_nested_runs_points_at_them(tmp_path):
    cache = write_tip_cache(tmp_path / "cache")
    runs = tmp_path / "runs"
    assert _fewshot(cache, runs / "demo").returncode == 0
    done = run_cli("ssp.cli.fewshot", "--report-only", "--output", runs)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no run results" in done.stderr and str(runs / "demo") in done.stderr

"""The results page: its data from run files, and the page itself in a real headless Chromium
(rows, sorting, filtering, a row's details, a screenshot that is not blank); ssp-report."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from _runs_with_samples import write_fake_runs

from ssp.cli import report as report_cli
from ssp.report.html import page_data, write_results_page
from ssp.report.reliability import format_calibration_table, load_run_files, load_samples
from ssp.report.tables import write_report


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    write_fake_runs(folder)
    return folder


@pytest.fixture(scope="module")
def page(runs_dir, tmp_path_factory) -> Path:
    return write_results_page(load_run_files([runs_dir]), tmp_path_factory.mktemp("site"))


def test_page_data_rows_average_seeds_and_name_files(runs_dir):
    runs = load_run_files([runs_dir])
    data = page_data(runs)
    assert len(data["rows"]) == 2 * 3 * 2 and data["n_runs"] == 24
    row = next(r for r in data["rows"] if (r["dataset"], r["method"], r["shots"]) == ("dtd", "gda", 4))
    accs = [r["test_accuracy"] for _, r in runs if (r["dataset"], r["method"], r["shots"]) == ("dtd", "gda", 4)]
    assert row["values"]["acc"][0] == pytest.approx(np.mean(accs))
    assert row["values"]["acc"][1] == pytest.approx(np.std(accs, ddof=1))
    details = data["details"][row["id"]]
    assert [r["seed"] for r in details["runs"]] == [1, 2]
    assert details["runs"][0]["provenance"]["protocol"]["split_manifest_sha256"] == "ab" * 32
    assert len(details["per_class"]["accuracy"]) == 5
    assert details["per_class"]["names"] == [f"dtd class {c}" for c in range(5)]
    other = next(r for r in data["rows"] if r["dataset"] == "eurosat")
    assert data["details"][other["id"]]["per_class"]["names"] is None


def test_samples_file_is_checked_against_its_sha256(runs_dir, tmp_path):
    path, record = load_run_files([runs_dir])[0]
    assert set(load_samples(path, record)) >= {"label", "prediction", "confidence", "class_confusion"}
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    shutil.copy(path.with_name(record["samples"]["file"]), tmp_path / record["samples"]["file"])
    with open(tmp_path / record["samples"]["file"], "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="SHA-256"):
        load_samples(copy, record)


def test_old_records_without_metrics_still_report(runs_dir, tmp_path, capsys):
    for path, record in load_run_files([runs_dir])[:4]:
        record.pop("reliability"), record.pop("samples")
        target = tmp_path / path.relative_to(runs_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record))
    table, paths = write_report(tmp_path)
    assert "calibration" not in paths and paths["page"].is_file()
    assert report_cli.main([str(tmp_path)]) == 0
    assert "no reliability metrics recorded" in capsys.readouterr().out
    assert "| - | -" in format_calibration_table([*(r for _, r in load_run_files([tmp_path])),
                                                   *(r for _, r in load_run_files([runs_dir]) if r["dataset"] == "eurosat")])


def test_ssp_report_cli(runs_dir, tmp_path, capsys):
    assert report_cli.main([str(runs_dir / "dtd" / "RN50@openai" / "gda"), "--html", str(tmp_path / "site")]) == 0
    out = capsys.readouterr().out
    assert "ECE (TS)" in out and "LAC cov" in out and (tmp_path / "site" / "index.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report_cli.main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssp-report: error: no run results") and len(err.strip().splitlines()) == 1
    assert report_cli.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_page_is_self_contained(page):
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched: it opens with no network
    assert text.count("data:image/png;base64,") >= 3 * 2  # 3 plots per dataset, embedded


# ---- the page in a real browser --------------------------------------------------------------

def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it): the results "
                "page is not browser-tested here")


def _browse(url: str, tmp_path: Path, *extra: str) -> str:
    """Chromium's DOM of ``url`` after its scripts ran (or what ``extra`` asks instead, e.g. a screenshot)."""
    extra = extra or ("--dump-dom",)
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Rows(HTMLParser):
    """The run table's rows (attributes) and the text of their cells, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.headers: list[dict] = []
        self._cell: list[str] | None = None
        self.details_hidden = True
        self.per_class: list[str] = []   # the cells of the opened row's per-class table
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-row" in a:
            self.rows.append({**a, "cells": []})
        elif tag == "th" and "data-key" in a:
            self.headers.append(a)
        elif tag == "td" and self._table == "per-class":
            self.per_class.append("")
        elif tag == "td" and self.rows and self._cell is None and self._table is None:
            self._cell = []
        elif tag == "div" and a.get("id") == "details":
            self.details_hidden = "hidden" in a
        elif tag == "table":
            self._table = a.get("class")

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._table == "per-class" and self.per_class:
            self.per_class[-1] += data

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        if tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append("".join(self._cell))
            self._cell = None


def _rows(dom: str) -> _Rows:
    parser = _Rows()
    parser.feed(dom)
    return parser


def test_page_in_chromium_sorts_filters_and_opens_a_row(page, tmp_path):
    url = page.resolve().as_uri()
    plain = _rows(_browse(url, tmp_path))
    assert len(plain.rows) == 12 and not any("hidden" in r for r in plain.rows)
    acc_col = [h["data-key"] for h in plain.headers].index("acc")
    accs = lambda rows: [float(r["cells"][acc_col].split(" ")[0]) for r in rows]  # noqa: E731
    assert accs(plain.rows) != sorted(accs(plain.rows), reverse=True)
    # one page load: the method and shots filters (change events on their selects) hide the other rows,
    # two clicks on the "acc" header sort descending, a click on a row opens its details
    dom = _browse(url + "#method=gda&shots=4&sort=acc:desc&row=3", tmp_path)
    state = _rows(dom)
    assert len(state.rows) == 12
    assert accs(state.rows) == sorted(accs(plain.rows), reverse=True)
    assert next(h for h in state.headers if h["data-key"] == "acc")["class"] == "sorted-desc"
    visible = [r for r in state.rows if "hidden" not in r]
    assert {(r["data-method"], r["data-shots"]) for r in visible} == {("gda", "4")} and len(visible) == 2
    assert not state.details_hidden
    assert "split_manifest_sha256" in dom and "Per-class accuracy" in dom
    # the per-class table names the classes where the runs recorded names, else gives their numbers
    for dataset in ("dtd", "eurosat"):
        row = next(r for r in plain.rows if r["data-dataset"] == dataset)
        opened = _rows(_browse(url + f"#row={row['data-row']}", tmp_path)).per_class
        classes = opened[0::3]
        assert len(classes) == 5, opened
        assert all((f"dtd class {c.split()[0]}" in c) == (dataset == "dtd") for c in classes), classes


def test_page_screenshot_is_not_blank(page, tmp_path):
    import matplotlib.image

    shot = tmp_path / "page.png"
    _browse(page.resolve().as_uri() + "#row=0", tmp_path, "--hide-scrollbars", "--window-size=1200,900",
            f"--screenshot={shot}")
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (900, 1200)
    assert pixels[..., :3].std() > 0.05  # text, table rules, highlights: not an empty page
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50

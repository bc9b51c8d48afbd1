"""GDA's published base-to-new and distribution-shift numbers (parsed from its logs, per seed) and
``ssp-reproduce --paper gda --track base2new|shift``."""
from __future__ import annotations

import json

import pytest
from _tip_cache_folder import write_tip_cache

from ssp.cli import reproduce
from ssp.report.published import (
    AVERAGE,
    BENCHMARK_DATASETS,
    PAPER_TRACKS,
    PROTOCOL_SOURCES,
    paper_preset,
    published_protocol_summary,
)
from ssp.report.protocol_comparison import compare_protocol


def _by(rows, **want):
    return {r["metric"]: r for r in rows if all(r[k] == v for k, v in want.items())}


def test_base2new_means_are_the_papers():
    """GDA's README / paper: 11-dataset mean base 83.96 / new 74.53 / HM 78.97 (ViT-B/16)."""
    rows = published_protocol_summary("gda_base2new_log")
    avg = _by(rows, dataset=AVERAGE, method="gda", backbone="ViT-B-16")
    assert round(avg["base_accuracy"]["mean"], 2) == 83.96 and round(avg["new_accuracy"]["mean"], 2) == 74.53
    assert round(avg["harmonic_mean"]["mean"], 2) == 78.97
    cars = _by(rows, dataset="stanford_cars", method="gda")
    assert cars["base_accuracy"]["n_seeds"] == 3 and round(cars["base_accuracy"]["mean"], 2) == 78.71
    assert {r["dataset"] for r in rows} == set(BENCHMARK_DATASETS) | {AVERAGE}


def test_shift_means_are_the_papers():
    """GDA, ViT-B/16, 3 seeds: ImageNet 72.23, V2 65.04, Sketch 48.96, A 50.51, R 76.97."""
    rows = _by(published_protocol_summary("gda_robustness_log", backbone="ViT-B-16"), method="gda")
    got = {m: round(r["mean"], 2) for m, r in rows.items()}
    assert got == {"test_accuracy": 72.23, "imagenet_v2_accuracy": 65.04, "imagenet_sketch_accuracy": 48.96,
                   "imagenet_a_accuracy": 50.51, "imagenet_r_accuracy": 76.97}
    assert all(r["n_seeds"] == 3 and r["std"] > 0 for r in rows.values())


@pytest.mark.parametrize("source", list(PROTOCOL_SOURCES))
def test_sources_record_repository_commit_and_file(source):
    from importlib import resources

    head = [line for line in (resources.files("ssp.report") / "published_numbers" / PROTOCOL_SOURCES[source][1])
            .read_text().splitlines() if line.startswith("#")]
    assert any("github.com/mrflogs/ICLR24 @ " in line and len(line.split("@ ")[1].split()[0]) == 40 for line in head)
    assert any(line.startswith("# file: logs/") for line in head)


def test_tracks_are_presets():
    assert paper_preset("gda", "base2new").protocol == "base2new"
    assert paper_preset("gda", "shift").eval_on == ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
    with pytest.raises(ValueError, match="few-shot tables only"):
        paper_preset("ape", "base2new")
    assert set(PAPER_TRACKS["gda"]) == {"base2new", "shift"}


def test_reproduce_base2new_track_on_caches_writes_the_comparison(tmp_path, capsys):
    root = tmp_path / "caches"
    write_tip_cache(root / "dtd", shots=(16,), n_val=4, n_test=3)
    out = tmp_path / "out"
    code = reproduce.main(["--paper", "gda", "--track", "base2new", "--features-root", str(root), "--datasets", "dtd",
                           "--seeds", "1", "--device", "cpu", "--no-progress",
                           "--output", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "harmonic mean (ours / published)" in text
    runs = [json.loads(p.read_text()) for p in out.rglob("*.run.json")]
    assert sorted(r["method"] for r in runs) == ["gda", "zero-shot"]
    assert all(r["protocol_name"] == "base2new" for r in runs)
    # the results page of the output folder, with the base-to-new columns and the new classes' calibration
    page = (out / "index.html").read_text()
    assert '"key": "harmonic_mean"' in page and all("reliability_new" in r for r in runs)
    comparison = json.loads((out / "comparison-base2new.json").read_text())
    gda = {r["metric"]: r for r in comparison["rows"] if r["method"] == "gda"}
    assert gda["harmonic_mean"]["ours_mean"] == pytest.approx(runs[[r["method"] for r in runs].index("gda")]
                                                              ["harmonic_mean"])
    assert gda["base_accuracy"]["published_mean"] is None  # an unlabelled cache is compared with no backbone
    # the same runs labelled as ViT-B/16 meet GDA's DTD numbers
    for r in runs:
        r["backbone"]["model"] = "ViT-B-16"
    rows = {r["metric"]: r for r in compare_protocol(runs, "gda_base2new_log") if r["method"] == "gda"}
    assert round(rows["base_accuracy"]["published_mean"], 2) == 80.63
    assert (out / "comparison-base2new.png").stat().st_size > 0


def test_reproduce_shift_track_needs_images(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        reproduce.main(["--paper", "gda", "--track", "shift", "--features-root", str(tmp_path), "--output",
                        str(tmp_path / "out")])
    assert "needs --root" in str(err.value.code)
    with pytest.raises(SystemExit) as err:
        reproduce.main(["--track", "base2new", "--dry-run"])
    assert "add --paper" in str(err.value.code)


def test_compare_protocol_averages_only_complete_suites():
    runs = [{"backbone": {"name": "ViT-B-16@openai", "model": "ViT-B-16"}, "method": "gda", "dataset": d,
             "shots": 16, "seed": 1, "base_accuracy": 80.0, "new_accuracy": 60.0} for d in BENCHMARK_DATASETS]
    rows = compare_protocol(runs, "gda_base2new_log")
    avg = {r["metric"]: r for r in rows if r["dataset"] == AVERAGE}
    assert avg["harmonic_mean"]["ours_mean"] == pytest.approx(2 * 80 * 60 / 140)
    assert round(avg["harmonic_mean"]["published_mean"], 2) == 78.97
    assert not [r for r in compare_protocol(runs[:3], "gda_base2new_log") if r["dataset"] == AVERAGE]

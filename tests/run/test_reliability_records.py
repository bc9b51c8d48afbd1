"""Every run records its reliability metrics and saves its per-sample / per-class arrays beside
its JSON; the saved arrays recompute the recorded ECE and conformal coverage (plain numpy here),
on a synthetic cache folder and on the real StanfordCars features."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from _tip_cache_folder import write_tip_cache

from ssp.cli import fewshot

KEYS = {"version", "n_test", "n_val", "n_bins", "raw", "temperature", "temperature_on_bound", "temperature_scaled", "aurc",
        "accuracy_at_coverage", "conformal"}


def _runs(folder: Path) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(folder.rglob("*.run.json"))]


def _numpy_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """ECE recomputed independently: bin b holds confidences in (b/n, (b+1)/n]."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        member = (confidence > lo) & (confidence <= hi) if b else (confidence <= hi)
        if member.any():
            total += member.sum() / len(confidence) * abs(correct[member].mean() - confidence[member].mean())
    return float(total)


def _check_run(path: Path, record: dict) -> dict:
    rel = record["reliability"]
    assert KEYS <= set(rel)
    for part in ("raw", "temperature_scaled"):
        assert set(rel[part]) == {"ece", "mce", "nll", "brier"}
    npz = path.with_name(record["samples"]["file"])
    assert hashlib.sha256(npz.read_bytes()).hexdigest() == record["samples"]["sha256"]
    with np.load(npz) as data:
        s = {k: data[k] for k in data.files}
    correct = s["label"] == s["prediction"]
    assert len(correct) == rel["n_test"]
    assert 100 * correct.mean() == pytest.approx(record["test_accuracy"], abs=1e-4)
    assert _numpy_ece(s["confidence"], correct, rel["n_bins"]) == pytest.approx(rel["raw"]["ece"], abs=1e-9)
    for score in ("lac", "aps"):
        c = rel["conformal"][score]
        threshold = s[f"{score}_threshold"]   # full precision (the JSON's is rounded for display)
        assert c["threshold"] is None if np.isinf(threshold) else c["threshold"] == pytest.approx(float(threshold))
        assert np.mean(s[f"{score}_score"] <= threshold) == pytest.approx(c["coverage"], abs=1e-12)
        assert s[f"{score}_set_size"].mean() == pytest.approx(c["mean_set_size"], abs=1e-9)
    assert rel["conformal"]["aps_randomisation"]["seed"] == record["seed"]
    assert s["class_confusion"].sum() == rel["n_test"]
    np.testing.assert_array_equal(np.diag(s["class_confusion"]),
                                  np.bincount(s["label"][correct], minlength=len(s["class_support"])))
    return rel


def test_every_run_records_metrics_and_samples(tmp_path, capsys):
    cache = write_tip_cache(tmp_path / "caches" / "dtd", n_val=10, n_test=10)
    out = tmp_path / "out"
    argv = ["--features", str(cache), "--shots", "1", "--seeds", "1", "--methods", "zero-shot", "tip-adapter",
            "--no-progress", "--device", "cpu", "--output", str(out)]
    assert fewshot.main(argv + ["--conformal-alpha", "0.2"]) == 0
    runs = _runs(out)
    assert len(runs) == 2
    for path, record in runs:
        assert _check_run(path, record)["conformal"]["alpha"] == 0.2
    assert (out / "index.html").is_file() and (out / "calibration.md").is_file()
    assert "LAC cov" in (out / "calibration.md").read_text()
    # another alpha is another setting: new runs beside the old ones, nothing silently reused
    assert fewshot.main(argv) == 0
    assert len(_runs(out)) == 4
    assert "already done" not in capsys.readouterr().out


def test_real_stanford_cars_calibration_and_coverage(tip_cache_root, tmp_path, capsys):
    """The real StanfordCars features, half of the validation images as the test split: the
    90% conformal sets cover 87-93% of the test half (the faster methods here; ProKeR's and the
    linear probe's searches take 20 s more; the README's calibration table holds every method)."""
    out = tmp_path / "cars"
    assert fewshot.main(["--features", str(tip_cache_root / "stanford_cars"), "--test-from-val", "0.5", "--shots",
                         "16", "--seeds", "1", "--methods", "zero-shot", "tip-adapter", "ape", "gda", "lp++",
                         "--no-progress", "--output", str(out)]) == 0
    assert len(_runs(out)) == 5
    for path, record in _runs(out):
        rel = _check_run(path, record)
        assert rel["n_val"] > 700 and rel["n_test"] > 700
        for score in ("lac", "aps"):
            assert 0.87 <= rel["conformal"][score]["coverage"] <= 0.93, (record["method"], score, rel["conformal"])
        # temperature scaling is fitted on validation and lowers the test NLL of these methods
        assert rel["temperature_scaled"]["nll"] < rel["raw"]["nll"]

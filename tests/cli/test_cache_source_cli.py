"""Issue 27 item 2: a Tip-Adapter cache folder is never filed under another dataset, and the flags
of images only are refused with it (never recorded in a run JSON as if used)."""
from __future__ import annotations

import json

import pytest
from _cli import run_cli
from _tip_cache_folder import write_tip_cache

FAST = ["--shots", "1", "--seeds", "1", "--methods", "zero-shot", "--no-progress"]


def test_a_cache_of_another_class_count_is_refused(tmp_path):
    cache = write_tip_cache(tmp_path / "my_cache", n_classes=196)  # StanfordCars-sized, filed as dtd
    done = run_cli("ssp.cli.fewshot", "--features", cache, "--dataset", "dtd", *FAST, "--output", tmp_path / "out")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "holds 196 classes, dtd has 47" in done.stderr and "stanford_cars has 196" in done.stderr
    assert str(cache) in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_cache_whose_folder_names_another_benchmark_is_refused(tmp_path):
    cache = write_tip_cache(tmp_path / "stanford_cars", n_classes=47)
    done = run_cli("ssp.cli.fewshot", "--features", cache, "--dataset", "dtd", *FAST, "--output", tmp_path / "out")
    assert done.returncode == 1
    assert "holds stanford_cars (its folder name), not dtd" in done.stderr and "--dataset stanford_cars" in done.stderr
    assert not (tmp_path / "out").exists()


def test_real_stanford_cars_cache_as_dtd_is_refused(tip_cache_root, tmp_path):
    done = run_cli("ssp.cli.fewshot", "--features", tip_cache_root / "stanford_cars", "--dataset", "dtd",
                   "--test-from-val", "0.5", *FAST, "--output", tmp_path / "out")
    assert done.returncode == 1 and "not dtd" in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [["--views", "4"], ["--precision", "fp16"], ["--quick-gelu", "on"],
                                   ["--recompute"], ["--skip-bad-images"], ["--batch-size", "8"],
                                   ["--feature-store", "store"], ["--pretrained", "openai"],
                                   ["--num-workers", "0"], ["--views", "2", "--recompute"]])
def test_image_only_flags_are_refused_with_a_cache(tmp_path, flags):
    cache = write_tip_cache(tmp_path / "dtd")
    done = run_cli("ssp.cli.fewshot", "--features", cache, *FAST, *flags, "--output", tmp_path / "out")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    named = [f for f in flags if f.startswith("--")]
    assert all(f in done.stderr for f in named)
    assert ("applies to images" if len(named) == 1 else "apply to images") in done.stderr
    assert not (tmp_path / "out").exists()
    suite = run_cli("ssp.cli.reproduce", "--features-root", tmp_path, "--datasets", "dtd", *FAST, *flags,
                    "--output", tmp_path / "suite")
    assert suite.returncode == 1 and all(f in suite.stderr for f in named) and "--features-root" in suite.stderr


def test_a_cache_run_records_no_image_only_setting(tmp_path):
    cache = write_tip_cache(tmp_path / "dtd")
    done = run_cli("ssp.cli.fewshot", "--features", cache, *FAST, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    (path,) = (tmp_path / "out").rglob("*.run.json")
    config = json.loads(path.read_text())["config"]
    assert config["dataset"] == "dtd" and config["shots"] == [1]
    for key in ("views", "precision", "quick_gelu", "pretrained", "batch_size", "num_workers", "skip_bad_images",
                "prompts"):
        assert key not in config, key


def test_image_only_keys_of_a_config_file_are_reported_as_ignored(tmp_path):
    cache = write_tip_cache(tmp_path / "dtd")
    config = tmp_path / "c.yaml"
    config.write_text("views: 4\nprecision: fp16\ntip_adapter: {init: {alpha: 2.0, beta: 1.0}}\n")
    done = run_cli("ssp.cli.fewshot", "--features", cache, "--config", config, *FAST, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert f"note: precision, views of {config} apply to images only: ignored" in done.stderr
    (path,) = (tmp_path / "out").rglob("*.run.json")
    recorded = json.loads(path.read_text())["config"]
    assert "views" not in recorded and "precision" not in recorded
    assert recorded["tip_adapter"]["init"]["alpha"] == 2.0  # the keys that apply are recorded as used

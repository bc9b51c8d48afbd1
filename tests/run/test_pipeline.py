"""``ssp-fewshot --features`` and ``ssp-reproduce`` on the real Tip-Adapter cache folders of
$SSP_DATA_ROOT (in-process ``main(argv)``; one real subprocess as a smoke test), and the run keys
that keep results of other settings apart."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import run_cli

REPO = Path(__file__).resolve().parents[2]
# small search grids (the shipped stanford_cars ranges, fewer steps): the tests stay fast
SMALL_GRIDS = "tip_adapter: {search_step: [20, 5]}\nape: {search_step: [20, 5, 4]}\n"
NOISE = re.compile(r"\d\.\d{9,}")  # float noise such as 2.8600000000000003


def _subprocess_cli(module: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _runs(folder: Path) -> dict[str, dict]:
    return {str(p.relative_to(folder)): json.loads(p.read_text()) for p in sorted(folder.rglob("*.run.json"))}


@pytest.fixture(scope="module")
def cars(tip_cache_root) -> Path:
    folder = tip_cache_root / "stanford_cars"
    if not (folder / "text_weights.pt").is_file():
        pytest.skip(f"{folder} has no text classifier")
    return folder


@pytest.fixture()
def small(tmp_path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_GRIDS)
    return path


@pytest.fixture(scope="module")
def features_run(cars, tmp_path_factory):
    """One real --features run: zero-shot, Tip-Adapter, APE (and APE+SSP, which must be skipped)."""
    tmp = tmp_path_factory.mktemp("features")
    (tmp / "small.yaml").write_text(SMALL_GRIDS)
    done = _subprocess_cli("ssp.cli.fewshot", "--features", cars, "--test-from-val", "0.5", "--shots", "1", "16", "--seeds", "1",
                "--methods", "zero-shot", "tip-adapter", "ape", "ape+ssp", "--config", tmp / "small.yaml",
                "--device", "cpu", "--output", tmp / "out")
    return tmp / "out", done


def test_features_path_end_to_end_on_the_real_stanford_cars_cache(features_run):
    out, done = features_run
    assert done.returncode == 0, done.stderr + done.stdout
    # SSP needs patch features, which a Tip-Adapter cache does not have: skipped, and why
    assert re.search(r"skipping ape\+ssp: SSP needs patch features", done.stdout)
    runs = _runs(out)
    assert len(runs) == 6  # 3 methods x 2 shot counts x 1 seed
    by = {(r["method"], r["shots"]): r for r in runs.values()}
    for shots in (1, 16):
        assert {m for m, k in by if k == shots} == {"zero-shot", "tip-adapter", "ape"}
    ape = by[("ape", 16)]
    assert ape["dataset"] == "stanford_cars"  # inferred from the folder name
    split = ape["protocol"]["test_from_val"]
    assert split["fraction"] == 0.5 and split["seed"] == 1
    assert split["n_search"] + split["n_test"] == split["n_val_features"] == 1635
    assert ape["protocol"]["n_test"] == split["n_test"] and ape["protocol"]["n_val"] <= split["n_search"]
    # coop validation: min(K, 4) per class, from the search part (a few classes have fewer there)
    assert 700 < ape["protocol"]["n_val"] <= 196 * 4
    assert ape["details"]["n_channels"] == 250  # the shipped 0.48828125 of D = 512 (500 of RN50's 1024)
    assert ape["text_features"]["file"].endswith("text_weights.pt") and len(ape["text_features"]["sha256"]) == 64
    env = ape["environment"]
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__ and env["open_clip"]
    assert env["command"].startswith("python -m ssp.cli.fewshot --features")
    assert ape["seeds"]["test_from_val_split"] == 1 and ape["settings_key"] in str(out / next(iter(runs)))
    assert ape["source"]["kind"] == "tip-adapter-cache" and "keys_16shots.pt" in ape["source"]["files_sha256"]
    # the same split (seed) for every method: zero-shot, Tip-Adapter and APE see the same test images
    assert len({r["protocol"]["n_test"] for r in runs.values() if r["shots"] == 16}) == 1
    # real features: the cache methods beat zero-shot clearly at 16 shots
    zs = by[("zero-shot", 16)]["test_accuracy"]
    assert by[("tip-adapter", 16)]["test_accuracy"] > zs + 5 and ape["test_accuracy"] > zs + 5
    # the printed table and lines: rounded for display
    assert "tip-adapter" in done.stdout and "16-shot" in done.stdout
    assert not NOISE.search(done.stdout), NOISE.search(done.stdout)


def test_rerun_with_other_settings_never_overwrites_and_tables_keep_them_apart(features_run, cars, small):
    out, first = features_run
    assert first.returncode == 0
    before = {p: (out / p).read_bytes() for p in _runs(out)}
    done = run_cli("ssp.cli.fewshot", "--features", cars, "--test-from-val", "0.5", "--shots", "1", "--seeds", "1",
                "--methods", "zero-shot", "--val-policy", "full", "--config", small, "--output", out)
    assert done.returncode == 0, done.stderr
    after = _runs(out)
    assert len(after) == len(before) + 1
    assert all((out / p).read_bytes() == data for p, data in before.items())  # nothing overwritten
    zero_shot_1 = [r for r in after.values() if r["method"] == "zero-shot" and r["shots"] == 1]
    assert len({r["settings_key"] for r in zero_shot_1}) == 2
    # two protocols -> two table blocks, each saying which settings it shows
    assert done.stdout.count("settings ") == 2 and "val full" in done.stdout and "val coop" in done.stdout


def test_suite_resumes_and_a_second_run_does_no_work(cars, small, tmp_path):
    root = cars.parent
    args = ["--features-root", root, "--datasets", "stanford_cars", "caltech101", "--shots", "1",
            "--seeds", "1", "2", "2", "--methods", "zero-shot", "tip-adapter", "--test-from-val", "0.5",
            "--config", small, "--output", tmp_path / "suite"]
    first = run_cli("ssp.cli.reproduce", *args)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "repeats" in first.stderr  # --seeds 1 2 2 -> 1 2, said once
    # caltech101's cache has no text classifier: skipped with the reason and the option
    assert "caltech101" in first.stdout and "--text-features" in first.stdout
    runs = sorted((tmp_path / "suite").rglob("*.run.json"))
    assert len(runs) == 4  # stanford_cars: 2 methods x 1 shot x 2 seeds
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    assert (tmp_path / "suite" / "results.md").is_file()

    second = run_cli("ssp.cli.reproduce", *args)
    assert second.returncode == 0, second.stderr
    assert "nothing to do: all 4 run(s) are already done" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "suite").rglob("*.run.json"))} == stamps

    dry = run_cli("ssp.cli.reproduce", *args, "--shots", "1", "2", "--dry-run")  # the last --shots wins
    assert dry.returncode == 0, dry.stderr
    assert "4 to run, 4 done" in dry.stdout and re.search(r"run\s+tip-adapter\s+2-shot seeds \[1, 2\]", dry.stdout)
    assert len(sorted((tmp_path / "suite").rglob("*.run.json"))) == 4  # a dry run writes nothing


def test_paper_preset_dry_run_lists_its_datasets_shots_and_seeds(tmp_path):
    done = run_cli("ssp.cli.reproduce", "--paper", "ape", "--output", tmp_path / "o", "--dry-run")
    assert done.returncode == 0, done.stderr
    blocks = re.findall(r"^(\w+) \| RN50: (\d+) to run, 0 done$", done.stdout, re.M)
    assert len(blocks) == 11  # the 11 benchmarks
    assert re.search(r"run  ape\s+16-shot seeds \[1, 2, 3\]", done.stdout)
    assert not (tmp_path / "o").exists()
    bad = run_cli("ssp.cli.reproduce", "--paper", "nope", "--output", tmp_path / "o", "--dry-run")
    assert bad.returncode == 2 and "choose from" in bad.stderr and "Traceback" not in bad.stderr  # a usage error


@pytest.fixture()
def textless_cache(cars, tmp_path) -> Path:
    """The StanfordCars cache without its text classifier (links, no copies)."""
    folder = tmp_path / "cars_no_text"
    folder.mkdir()
    for p in cars.iterdir():
        if p.name != "text_weights.pt" and ("1shots" in p.name or p.name.startswith("val_")):
            (folder / p.name).symlink_to(p)
    return folder


def test_text_features_file_in_either_orientation_and_format(cars, textless_cache, tmp_path):
    text_dc = torch.load(cars / "text_weights.pt", map_location="cpu", weights_only=True)  # [D, C]
    np.save(tmp_path / "text_dc.npy", text_dc.numpy())
    from safetensors.torch import save_file

    save_file({"text_features": text_dc.T.contiguous()}, str(tmp_path / "text_cd.safetensors"))
    common = ["--test-from-val", "0.5", "--shots", "1", "--seeds", "1", "--methods", "zero-shot",
              "--dataset", "stanford_cars"]
    missing = run_cli("ssp.cli.fewshot", "--features", textless_cache, *common, "--output", tmp_path / "none")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "text_weights" in missing.stderr and "--text-features" in missing.stderr
    assert not (tmp_path / "none").exists()

    accs = []
    for name in ("text_dc.npy", "text_cd.safetensors"):
        done = run_cli("ssp.cli.fewshot", "--features", textless_cache, "--text-features", tmp_path / name, *common,
                    "--output", tmp_path / name.split(".")[0])
        assert done.returncode == 0, done.stderr
        (run,) = _runs(tmp_path / name.split(".")[0]).values()
        assert run["text_features"]["source"] == "file given with --text-features"
        accs.append(run["test_accuracy"])
    assert accs[0] == accs[1] and accs[0] > 50  # real text classifier: zero-shot about 59 %


def test_square_text_classifier_needs_an_explicit_layout(tmp_path):
    from ssp.features.text import load_text_features

    np.save(tmp_path / "sq.npy", np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32))
    with pytest.raises(ValueError, match="--text-layout CD or DC"):
        load_text_features(tmp_path / "sq.npy", 8, 8)
    assert load_text_features(tmp_path / "sq.npy", 8, 8, layout="DC").shape == (8, 8)
    with pytest.raises(ValueError, match=r"expected \[C, D\] = \[3, 8\]"):
        load_text_features(tmp_path / "sq.npy", 3, 8)


def test_split_validation_is_seeded_stratified_and_disjoint():
    from ssp.run.sources import split_validation

    labels = torch.arange(10).repeat_interleave(7)
    search, test = split_validation(labels, 0.5, seed=3)
    assert set(search.tolist()).isdisjoint(test.tolist()) and len(search) + len(test) == 70
    assert torch.bincount(labels[test], minlength=10).tolist() == [4] * 10  # round(3.5) = 4 per class
    again = split_validation(labels, 0.5, seed=3)
    assert torch.equal(again[1], test) and not torch.equal(split_validation(labels, 0.5, seed=4)[1], test)


@pytest.mark.parametrize("text, message", [
    ("n_chanels: 100\n", "unknown config key 'n_chanels'; did you mean 'ape.n_channels' or 'ape_t.n_channels'?"),
    ("shotz: [1]\n", "unknown config key 'shotz'; did you mean 'shots'?"),
    ("tip_adapter:\n  search_scale: 7\n", "'tip_adapter.search_scale' must be a list"),
])
def test_config_errors_through_the_cli(cars, tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    done = run_cli("ssp.cli.fewshot", "--features", cars, "--test-from-val", "0.5", "--shots", "1", "--seeds", "1",
                "--methods", "zero-shot", "--config", bad, "--output", tmp_path / "out")
    assert done.returncode == 1 and message in done.stderr and "bad.yaml" in done.stderr
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("ssp-fewshot: error:")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size: must be a positive integer, got 0"),
    (["--num-workers", "-1"], "--num-workers: must be an integer >= 0"),
    (["--test-from-val", "1.5"], "--test-from-val: must be a fraction in (0, 1)"),
])
def test_bad_values_are_rejected_up_front(cars, tmp_path, args, message):
    done = run_cli("ssp.cli.fewshot", "--features", cars, "--test-from-val", "0.5", "--shots", "1", "--seeds", "1",
                "--methods", "zero-shot", *args, "--output", tmp_path / "out")
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_missing_test_split_and_report_only_without_runs_are_clean_errors(cars, tmp_path):
    done = run_cli("ssp.cli.fewshot", "--features", cars, "--shots", "1", "--seeds", "1", "--methods", "zero-shot",
                "--output", tmp_path / "out")
    assert done.returncode == 1 and "no test features" in done.stderr and "--test-from-val 0.5" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    report = run_cli("ssp.cli.fewshot", "--report-only", "--output", tmp_path / "empty")
    assert report.returncode == 1 and "ssp-fewshot: error: --report-only: no run results" in report.stderr
    assert list((tmp_path / "empty").iterdir()) == []


def test_duplicate_seeds_are_removed_up_front(cars, tmp_path):
    done = run_cli("ssp.cli.fewshot", "--features", cars, "--test-from-val", "0.5", "--shots", "1", "--seeds", "1", "1",
                "--methods", "zero-shot", "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "--seeds 1 1 has repeats; using 1" in done.stderr
    assert len(_runs(tmp_path / "out")) == 1 and "1 runs under" in done.stdout


@pytest.mark.slow
def test_suite_from_images_plans_the_paths_it_writes(data_root, tmp_path):
    """The suite decides what is done before loading any backbone: its planned paths must be the
    ones the runs are written to, or a second call would redo the work."""
    args = ["--root", data_root / "coop", "--datasets", "dtd", "--backbones", REPO / "tests/assets/tiny-rn.json",
            "--pretrained", "none", "--device", "cpu", "--views", "1", "--shots", "1", "--seeds", "1",
            "--methods", "zero-shot", "tip-adapter", "--config", tmp_path / "small.yaml", "--no-progress",
            "--feature-store", tmp_path / "cache", "--output", tmp_path / "suite"]
    (tmp_path / "small.yaml").write_text(SMALL_GRIDS)
    first = run_cli("ssp.cli.reproduce", *args)
    assert first.returncode == 0, first.stderr + first.stdout
    assert len(_runs(tmp_path / "suite")) == 2
    second = run_cli("ssp.cli.reproduce", *args)
    assert second.returncode == 0 and "nothing to do: all 2 run(s) are already done" in second.stdout


def test_a_clamped_n_channels_is_printed_and_the_value_used_recorded(cars, tmp_path):
    """The published configs ask for 800 APE channels; a D = 512 backbone cannot honour that: the
    CLI says so and the run JSON records the 512 channels used, next to the configured 800."""
    (tmp_path / "c.yaml").write_text("ape: {n_channels: 800, search_step: [20, 5, 4]}\n")
    done = run_cli("ssp.cli.fewshot", "--features", cars, "--test-from-val", "0.5", "--shots", "1", "--seeds", "1",
                "--methods", "ape", "--config", tmp_path / "c.yaml", "--device", "cpu", "--no-progress",
                "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr + done.stdout
    message = "n_channels=800 exceeds the feature width D=512; using all 512 channels"
    assert f"warning (ape): {message}" in done.stdout
    (record,) = _runs(tmp_path / "out").values()
    assert record["details"]["n_channels"] == 512 and record["config"]["ape"]["n_channels"] == 800
    assert message in record["warnings"] and "warnings" not in record["details"]

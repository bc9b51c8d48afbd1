"""``ssp-fewshot`` end to end on the real images of ../shared/data with a tiny random backbone."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from _cli import run_cli, run_ok

from ssp.cli.fewshot import main
from ssp.run.config import load_config

ASSETS = Path(__file__).parents[1] / "assets"


def _common(tmp_path: Path, backbone: str = "tiny-rn.json") -> list[str]:
    return ["--backbone", str(ASSETS / backbone), "--pretrained", "none", "--device", "cpu",
            "--views", "1", "--output", str(tmp_path / "out"), "--feature-store", str(tmp_path / "cache"),
            "--no-progress"]


@pytest.mark.slow
def test_dtd_end_to_end_writes_runs_table_and_reuses_cache(data_root, tmp_path, capsys):
    import warnings

    args = ["--dataset", "dtd", "--root", str(data_root / "coop"), "--shots", "1", "2", "--seeds", "1",
            *_common(tmp_path)]
    filters = list(warnings.filters)
    out = run_ok("ssp.cli.fewshot", *args)
    assert warnings.filters == filters  # cli.main leaves the process-wide warning filters alone

    runs = sorted((tmp_path / "out").rglob("*.run.json"))
    default_methods = load_config("dtd")["methods"]
    assert len(runs) == len(default_methods) * 2  # every default method x 2 shot counts x 1 seed
    record = json.loads(runs[0].read_text())
    assert record["dataset"] == "dtd" and record["backbone"]["name"] == "tiny-rn@none"
    assert record["protocol"]["hyperparameters_chosen_on"] == "validation split"
    assert record["protocol"]["n_classes"] == 10 and record["protocol"]["n_test"] == 360
    for key in ("val_accuracy", "test_accuracy", "hyperparameters", "timings", "config", "seed"):
        assert key in record
    (ssp_path,) = (tmp_path / "out/dtd/tiny-rn@none/ape+ssp").glob("*/2shot_seed1.run.json")
    ssp_run = json.loads(ssp_path.read_text())
    assert ssp_path.parent.name == ssp_run["settings_key"]
    assert ssp_run["hyperparameters"]["routing"] in ("paper", "vision", "reference")
    assert ssp_run["protocol"]["n_support"] == 20 and ssp_run["protocol"]["n_val"] == 20  # coop: min(K, 4)
    assert 1 <= ssp_run["details"]["vision_rank"] <= 32

    # the table: one row per method, one column per shot count
    table = out[out.index("dtd | tiny-rn@none"):]
    assert "1-shot" in table and "2-shot" in table
    for method in default_methods:
        assert any(line.split()[0] == method for line in table.splitlines()[3:] if line.strip())
    for name in ("results.md", "results.png", "summary.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "0 file(s) reused" in out

    # the same command again: every run is reused (resume by default), nothing is recomputed
    before = {p.name: json.loads(p.read_text())["test_accuracy"] for p in runs}
    out_resume = run_ok("ssp.cli.fewshot", *args)
    assert f"all {len(runs)} runs already done" in out_resume and "extracted" not in out_resume
    # --rerun: every run again, every feature file from the feature store, results identical
    out2 = run_ok("ssp.cli.fewshot", *args, "--rerun")
    assert "0 extracted" in out2 and "0 file(s) reused" not in out2
    after = {p.name: json.loads(p.read_text())["test_accuracy"] for p in (tmp_path / "out").rglob("*.run.json")}
    assert after == before


@pytest.mark.slow
def test_imagenet_layout_end_to_end(data_root, tmp_path, capsys):
    root = data_root / "imagenet_tiny"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    out = run_ok("ssp.cli.fewshot", "--dataset", "imagenet", "--root", str(root), "--shots", "1", "--seeds", "1", "2",
               "--methods", "zero-shot", "tip-adapter+ssp", *_common(tmp_path, "tiny-vit.json"))
    runs = sorted((tmp_path / "out").rglob("*.run.json"))
    assert len(runs) == 4
    record = json.loads(runs[0].read_text())
    assert record["protocol"]["n_classes"] == 200 and record["protocol"]["n_test"] == 200 * 25
    # ImageNet has no val split: validation is carved from train images that are not shots
    assert record["protocol"]["n_val"] == 200
    assert "mean ± std over seeds [1, 2]" in out


def test_missing_dataset_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--dataset", "dtd", "--root", str(tmp_path / "nowhere"), *_common(tmp_path)])
    message = str(err.value)
    assert "nowhere" in message and "ssp-fewshot" in message


def test_bad_values_are_rejected_before_any_work(data_root, tmp_path):
    """A real dataset root: without the up-front checks these runs would start and write files."""
    root = data_root / "coop"
    base = ["--dataset", "dtd", "--root", root, *_common(tmp_path)]
    for bad, flag in ((["--shots", "0"], "--shots"), (["--ssp-rank", "1.5"], "--ssp-rank"),
                      (["--batch-size", "0"], "--batch-size"), (["--num-workers", "-1"], "--num-workers"),
                      (["--val-policy", "half"], "--val-policy")):
        done = run_cli("ssp.cli.fewshot", *base, *bad)
        assert done.returncode != 0 and flag in done.stderr and "Traceback" not in done.stderr, bad
        assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists(), bad
    with pytest.raises(SystemExit, match="--dataset is required"):
        main(["--root", str(tmp_path)])


def test_main_leaves_the_process_warning_filters_alone(tmp_path, capsys):
    import warnings

    from ssp.cli.fewshot import random_weights_banner

    before = list(warnings.filters)
    with random_weights_banner({"pretrained": "none"}):
        assert warnings.filters != before  # the banner replaces the per-load warning inside the block
        assert "RANDOMLY INITIALISED" not in capsys.readouterr().err   # nothing loaded yet: no banner
        for _ in range(2):
            warnings.warn("backbone 'x' is RANDOMLY INITIALISED (seed 0): ...")
    assert warnings.filters == before
    assert capsys.readouterr().err.count("RANDOMLY INITIALISED backbone") == 1


def test_report_only_rebuilds_table_from_jsons(tmp_path, capsys):
    from ssp.run.records import write_run

    for seed, acc in ((1, 60.0), (2, 62.0)):
        write_run(tmp_path, {"dataset": "dtd", "backbone": {"name": "RN50@openai"}, "method": "ape",
                             "shots": 4, "seed": seed, "val_accuracy": acc, "test_accuracy": acc})
    out = run_ok("ssp.cli.fewshot", "--report-only", "--output", str(tmp_path))
    assert "61.00 ± 1.41" in out and (tmp_path / "results.md").is_file()


def test_console_script_is_registered_and_runs():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "ssp-fewshot"]
    assert script.value == "ssp.cli.fewshot:main"
    done = subprocess.run([sys.executable, "-m", "ssp.cli.fewshot", "--list-datasets"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    names = done.stdout.split()
    for name in ("imagenet", "dtd", "oxford_pets", "stanford_cars", "ucf101", "imagefolder"):
        assert name in names

"""Issue 27 item 12: one data-location rule. ``--root`` defaults to $SSP_DATA_ROOT, and a data root
holds the dataset folders directly or in its ``coop/`` subfolder (the README's layout)."""
from __future__ import annotations

import json

from _cli import run_cli
from _dtd_subset import dtd_subset

ASSETS = __import__("pathlib").Path(__file__).parents[1] / "assets"


def test_the_default_root_finds_datasets_in_its_coop_subfolder(data_root, tmp_path, monkeypatch):
    assert (data_root / "coop" / "dtd").is_dir()
    monkeypatch.setenv("SSP_DATA_ROOT", str(data_root))  # the README layout: $SSP_DATA_ROOT/coop/dtd
    verify = run_cli("ssp.cli.data", "verify", "dtd", "--images", "exists", "--no-progress")
    assert verify.returncode == 0, verify.stderr
    assert f"dtd: ok  {data_root / 'coop' / 'dtd'}" in verify.stdout
    everything = run_cli("ssp.cli.data", "verify", "--images", "exists", "--no-progress")
    assert "dtd: ok" in everything.stdout and "oxford_pets: ok" in everything.stdout
    out = tmp_path / "m.json"
    splits = run_cli("ssp.cli.data", "splits", "--dataset", "dtd", "--shots", "1", "--seeds", "1", "-o", out)
    assert splits.returncode == 0 and json.loads(out.read_text())["n_classes"] == 10
    # ssp-fewshot without --root (a few images only: --split-file, read from $SSP_DATA_ROOT/coop/dtd)
    split = dtd_subset(data_root, tmp_path, classes=2, train=1, val=1, test=1)
    done = run_cli("ssp.cli.fewshot", "--dataset", "dtd", "--split-file", split, "--shots", "1", "--seeds", "1",
                   "--methods", "zero-shot",
                   "--backbone", ASSETS / "tiny-rn.json", "--pretrained", "none", "--device", "cpu", "--views", "1",
                   "--no-progress", "--output", tmp_path / "out", "--feature-store", tmp_path / "store")
    assert done.returncode == 0, done.stderr
    (run,) = (tmp_path / "out").rglob("*.run.json")
    assert json.loads(run.read_text())["source"]["dataset_root"] == str((data_root / "coop" / "dtd").resolve())


def test_without_any_root_the_error_points_at_ssp_data_download(tmp_path, monkeypatch):
    monkeypatch.delenv("SSP_DATA_ROOT", raising=False)
    done = run_cli("ssp.cli.fewshot", "--dataset", "dtd", "--output", tmp_path / "out")
    assert done.returncode == 1 and "--root is required" in done.stderr and "ssp-data download" in done.stderr
    verify = run_cli("ssp.cli.data", "verify", "dtd")
    assert verify.returncode == 2 and "--root" in verify.stderr


def test_download_into_a_root_with_coop_goes_to_coop(tmp_path):
    root = tmp_path / "DATA"
    (root / "coop").mkdir(parents=True)
    done = run_cli("ssp.cli.data", "download", "dtd", "--root", root, "--no-progress")  # no network: split only
    assert done.returncode == 1
    assert (root / "coop" / "dtd" / "split_zhou_DescribableTextures.json").is_file() and not (root / "dtd").exists()

"""``ssp-data``: the quick start against a local server (download -> ssp-fewshot), verify, splits."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from _local_http import DTD_CLASSES, LocalFiles, dtd_files, linked_copy, pin

from ssp.cli.data import main

ASSETS = Path(__file__).parents[1] / "assets"
REPO = Path(__file__).parents[2]


def _fewshot(tmp_path: Path, root: Path, *extra: str, out: str = "out") -> list[dict]:
    from ssp.cli.fewshot import main as fewshot

    out = tmp_path / out
    assert fewshot(["--dataset", "dtd", "--root", str(root), "--backbone", str(ASSETS / "tiny-vit.json"),
                    "--pretrained", "none", "--views", "1", "--shots", "1", "--seeds", "1", "--methods", "zero-shot",
                    "tip-adapter", "--device", "cpu", "--output", str(out), "--feature-store", str(tmp_path / "cache"),
                    "--no-progress", *extra]) == 0
    return [json.loads(p.read_text()) for p in sorted(out.rglob("*.run.json"))]


@pytest.mark.filterwarnings("ignore:.*RANDOMLY INITIALISED:UserWarning")
def test_quick_start_download_then_fewshot(tmp_path, monkeypatch, capsys):
    """README quick start: ssp-data download dtd --root DATA, then ssp-fewshot --dataset dtd --root DATA."""
    files = dtd_files()
    pin(monkeypatch, "dtd", files)
    data = tmp_path / "DATA"
    with LocalFiles(files) as server:
        assert main(["download", "dtd", "--root", str(data), "--mirror", server.url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"dtd: downloaded, ready at {data / 'dtd'} (" in out and "files, " in out
    assert main(["verify", "--root", str(data), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("dtd: ok")

    records = _fewshot(tmp_path, data)
    assert sorted(r["method"] for r in records) == ["tip-adapter", "zero-shot"]
    assert all(r["protocol"]["n_classes"] == 3 and r["protocol"]["n_test"] == 3 for r in records)

    # every run JSON records its exact support set; fed back, it reproduces the run
    tip = next(r for r in records if r["method"] == "tip-adapter")
    manifest = tip["split_manifest"]
    (draw,) = manifest["draws"]
    assert [label for _, label in draw["support"]] == [0, 1, 2]
    assert all(path.startswith(f"images/{DTD_CLASSES[label]}/") for path, label in draw["support"])
    assert tip["source"]["split_is_official"] is True  # the served split file matched the (test-pinned) digest
    run_json = next((tmp_path / "out").rglob("1shot_seed1.run.json"))
    again = _fewshot(tmp_path, data, "--split-manifest", str(run_json), out="out2")
    tip2 = next(r for r in again if r["method"] == "tip-adapter")
    assert tip2["split_manifest"]["draws"] == manifest["draws"]
    assert tip2["test_accuracy"] == tip["test_accuracy"] and tip2["val_accuracy"] == tip["val_accuracy"]
    assert tip2["source"]["split_manifest_given"] == manifest["sha256"]
    # the table header tells a manifest run from a drawn one (issue 27, item 9)
    assert f"support from split manifest {manifest['sha256'][:10]}" in tip2["protocol_summary"]
    assert "split manifest" not in tip["protocol_summary"]

    # a hand-made manifest (the other train image of each class) is used as given, not the sampler's draw
    from ssp.data import get_dataset
    from ssp.data.manifest import _sha256

    ds = get_dataset("dtd", data)
    chosen = {path for path, _ in draw["support"]}
    custom = [[f"images/{Path(s.path).parent.name}/{Path(s.path).name}", s.label] for s in ds.train
              if f"images/{Path(s.path).parent.name}/{Path(s.path).name}" not in chosen]
    hand = dict(manifest, draws=[dict(draw, support=custom, support_sha256=_sha256(custom))])
    (tmp_path / "hand.json").write_text(json.dumps(hand))
    third = _fewshot(tmp_path, data, "--split-manifest", str(tmp_path / "hand.json"), out="out3")
    assert all(r["split_manifest"]["draws"][0]["support"] == custom for r in third)
    assert custom != draw["support"] and len(custom) == 3

    # a manifest made for another dataset is refused before any work, with the reason
    other = dict(manifest, dataset="oxford_pets")
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="split manifest is for dataset 'oxford_pets', not 'dtd'"):
        _fewshot(tmp_path, data, "--split-manifest", str(tmp_path / "other.json"), out="o3")
    assert not (tmp_path / "o3").exists() or not any((tmp_path / "o3").rglob("*.run.json"))


def test_verify_exit_codes_and_one_line_failure(data_root, tmp_path, capsys):
    assert main(["verify", "--root", str(data_root / "coop"), "dtd", "oxford_pets", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dtd: ok" in out and "oxford_pets: ok" in out and "a 10-class subset" in out

    copy = linked_copy(data_root / "coop" / "oxford_pets", tmp_path / "oxford_pets")
    victim = sorted((copy / "images").iterdir())[3]
    victim.unlink()
    assert main(["verify", "--root", str(tmp_path), "--images", "exists", "--json", str(tmp_path / "r.json")]) == 1
    captured = capsys.readouterr()
    first = captured.out.splitlines()[0]
    assert first.startswith("oxford_pets: MISSING  1 of ") and str(victim) in first
    assert "not ready: oxford_pets" in captured.err
    assert json.loads((tmp_path / "r.json").read_text())[0]["missing"] == [str(victim)]


def test_verify_with_nothing_to_check_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no dataset folder found under"):
        main(["verify", "--root", str(tmp_path)])


def test_splits_writes_a_manifest_without_images(data_root, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["splits", "--dataset", "dtd", "--root", str(data_root / "coop"), "--shots", "1", "2",
                 "--seeds", "1", "2", "3", "-o", str(out)]) == 0
    manifest = json.loads(out.read_text())
    assert [(d["shots"], d["seed"]) for d in manifest["draws"]] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert manifest["sha256"] in capsys.readouterr().out
    assert len(manifest["split_file_sha256"]) == 64
    with pytest.raises(SystemExit, match="--val-policy must be coop, full or a positive integer"):
        main(["splits", "--dataset", "dtd", "--root", str(data_root / "coop"), "--shots", "1", "--seeds", "1",
              "--val-policy", "half", "-o", str(out)])


def test_download_of_a_manual_dataset_exits_non_zero_with_the_steps(tmp_path, monkeypatch, capsys):
    split = {"train": [["UCF-101-midframes/A/v_A_g01_c01.jpg", 0, "A"]], "val": [], "test": []}
    files = {"split_zhou_UCF101.json": json.dumps(split).encode()}
    pin(monkeypatch, "ucf101", files)
    with LocalFiles(files) as server:
        assert main(["download", "ucf101", "--root", str(tmp_path), "--mirror", server.url, "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "UCF-101-midframes.zip" in captured.out and "1 dataset(s) not ready" in captured.err


def test_console_script_and_list_without_torch():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "ssp-data"] or [None]
    if script is not None:  # registered once the package is reinstalled from this checkout
        assert script.value == "ssp.cli.data:main"
    code = "import sys; from ssp.cli.data import main; main(['list']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "split_zhou_DescribableTextures.json (f26ebeccd2b5...)" in done.stdout
    assert done.stdout.strip().endswith("False")  # ssp-data list does not import torch

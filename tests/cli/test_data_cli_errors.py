"""Issue 27 items 3 and 5 (ssp-data): bad output paths and bad split manifests get one line naming
the file and the field, never a traceback; misleading messages corrected."""
from __future__ import annotations

import json

import pytest
from _cli import run_cli

SPLITS = ["splits", "--dataset", "dtd", "--shots", "1", "--seeds", "1"]


def _no_traceback(done):
    assert done.returncode not in (0, None) and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_splits_and_verify_outputs_that_cannot_be_written(data_root, tmp_path):
    root = data_root / "coop"
    (tmp_path / "FILE").write_text("")
    for target, says in ((tmp_path, "is a folder"), (tmp_path / "FILE" / "m.json", "is a file, not a folder"),
                         ("/proc/m.json", "/proc is not writable")):
        done = run_cli("ssp.cli.data", *SPLITS, "--root", root, "-o", target)
        _no_traceback(done)
        assert "-o/--output" in done.stderr and says in done.stderr, done.stderr
    done = run_cli("ssp.cli.data", "verify", "--root", root, "dtd", "--images", "exists", "--no-progress",
                   "--json", tmp_path)
    _no_traceback(done)
    assert "--json" in done.stderr and "is a folder" in done.stderr and done.stdout == ""  # refused before work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def _manifest(data_root, tmp_path):
    out = tmp_path / "m.json"
    assert run_cli("ssp.cli.data", *SPLITS, "--root", data_root / "coop", "-o", out).returncode == 0
    return out, json.loads(out.read_text())


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(draws="1-shot seed 1"), "draws must be a list"),
    (lambda m: m.update(draws=["a", "b"]), "draws[0] must be a draw"),
    (lambda m: m["draws"][0].pop("support"), "draws[0] (1-shot seed 1) has no 'support'"),
    (lambda m: m["draws"][0].update(shots="one"), "draws[0].shots must be a positive integer, got 'one'"),
    (lambda m: m["draws"][0].update(seed=-1), "draws[0].seed must be an integer >= 0"),
    (lambda m: m["draws"][0].update(support="images/x.jpg"), "draws[0] (1-shot seed 1).support must be a list"),
    (lambda m: m["draws"][0]["support"].__setitem__(0, "x.jpg"), "support[0] must be [relative_path, label]"),
    (lambda m: m.update(classnames="banded"), "classnames must be a list"),
])
def test_a_malformed_manifest_is_named_with_its_field(data_root, tmp_path, edit, field):
    path, manifest = _manifest(data_root, tmp_path)
    edit(manifest)
    path.write_text(json.dumps(manifest))
    done = run_cli("ssp.cli.fewshot", "--dataset", "dtd", "--root", data_root / "coop", "--split-manifest", path,
                   "--shots", "1", "--seeds", "1", "--output", tmp_path / "out", "--feature-store",
                   tmp_path / "store", "--pretrained", "none", "--device", "cpu", "--no-progress")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert str(path) in done.stderr and field in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()

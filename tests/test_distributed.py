"""torchrun with 2 CPU processes (gloo) gives the same feature store, bit for bit, as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ssp.cli import main

from _dtd_subset import dtd_subset

REPO = Path(__file__).resolve().parents[1]


def _tensors(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {name: f.get_tensor(name) for name in f.keys()}


@pytest.mark.slow
def test_torchrun_two_processes_store_identical_features(data_root, tmp_path, capsys):
    split = dtd_subset(data_root, tmp_path, train=4, val=2, test=3)
    # batch 2: 9 test images -> 5 batches (rank 0 gets three), 1-shot x 2 views -> 6 items -> 3 batches
    common = ["--dataset", "dtd", "--root", str(data_root / "coop"), "--split-file", str(split),
              "--shots", "1", "--seeds", "1", "--methods", "zero-shot", "zero-shot+ssp",
              "--backbone", str(REPO / "tests/assets/tiny-rn.json"), "--pretrained", "none", "--device", "cpu",
              "--views", "2", "--batch-size", "2", "--num-workers", "0", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    # the reference: one process, one thread (as each torchrun worker)
    assert main([*common, "--output", str(one / "out"), "--cache-dir", str(one / "cache")]) == 0
    out_one = capsys.readouterr().out

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ssp.cli", *common, "--output", str(two / "out"), "--cache-dir", str(two / "cache")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    files_one = sorted(p.relative_to(one / "cache") for p in (one / "cache").rglob("*.safetensors"))
    files_two = sorted(p.relative_to(two / "cache") for p in (two / "cache").rglob("*.safetensors"))
    assert files_one == files_two and len(files_one) == 4  # text + test + val + support: same keys
    assert not [p for p in (two / "cache").rglob("*") if p.name.endswith(".tmp")]
    saw_views = False
    for rel in files_one:
        meta_one, t_one = _tensors(one / "cache" / rel)
        meta_two, t_two = _tensors(two / "cache" / rel)
        assert meta_one == meta_two
        assert t_one.keys() == t_two.keys()
        for name in t_one:
            assert t_one[name].dtype == t_two[name].dtype and torch.equal(t_one[name], t_two[name]), (rel, name)
        saw_views |= "views" in t_one and "local" in t_one
    assert saw_views  # the support entries (per-view and local features) were compared too

    # rank 0 alone ran the methods and wrote the results: each run once, same numbers
    runs_one = {p.name: json.loads(p.read_text()) for p in (one / "out").rglob("*.run.json")}
    runs_two = {p.name: json.loads(p.read_text()) for p in (two / "out").rglob("*.run.json")}
    assert runs_one.keys() == runs_two.keys() and len(runs_one) == 2
    for name in runs_one:
        assert runs_one[name]["test_accuracy"] == runs_two[name]["test_accuracy"]
        assert runs_one[name]["val_accuracy"] == runs_two[name]["val_accuracy"]
    assert done.stdout.count("2 runs written") == 1 and "2 runs written" in out_one
    assert done.stdout.count("[ssp] dtd: 3 classes") == 1

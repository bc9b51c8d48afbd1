"""torchrun with 2 CPU processes (gloo) gives the same feature store, bit for bit, as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed  # noqa: F401  (imported once here, inherited by the forked ranks)
from _dtd_subset import dtd_subset
from safetensors import safe_open

from ssp.cli.fewshot import main

REPO = Path(__file__).resolve().parents[2]


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
    assert main([*common, "--output", str(one / "out"), "--feature-store", str(one / "cache")]) == 0
    out_one = capsys.readouterr().out

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ssp.cli.fewshot", *common, "--output", str(two / "out"), "--feature-store", str(two / "cache")],
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
    def runs(folder):  # relative paths: the run files of several methods share a file name
        return {str(p.relative_to(folder)): json.loads(p.read_text()) for p in folder.rglob("*.run.json")}

    runs_one, runs_two = runs(one / "out"), runs(two / "out")
    assert runs_one.keys() == runs_two.keys() and len(runs_one) == 2
    for name in runs_one:
        assert runs_one[name]["test_accuracy"] == runs_two[name]["test_accuracy"]
        assert runs_one[name]["val_accuracy"] == runs_two[name]["val_accuracy"]
    assert done.stdout.count("2 runs under") == 1 and "2 runs under" in out_one
    assert done.stdout.count("[ssp] dtd: 3 classes") == 1


# --------------------------------------------------------------------------------------------
# extract_features across 2 forked gloo processes (cheap: no interpreter start-up)
# --------------------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, samples, kwargs: dict, folder: Path) -> None:
    import torch.distributed as dist
    from _fake_backbone import FakeBackbone

    from ssp.features.extract import extract_features

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        try:
            out = extract_features(FakeBackbone(), samples, progress=False, num_workers=0, **kwargs)
            torch.save(out, folder / f"rank{rank}.pt")
        except Exception as err:  # reported to the test through a file
            (folder / f"rank{rank}.err").write_text(f"{type(err).__name__}: {err}")
    finally:
        dist.destroy_process_group()


def _sharded(samples, tmp_path: Path, name: str, **kwargs) -> list:
    """Run extract_features on 2 ranks; each rank's result (a dict) or error (a str)."""
    import torch.multiprocessing as mp

    folder = tmp_path / name
    folder.mkdir()
    mp.start_processes(_rank_main, args=(2, _free_port(), samples, kwargs, folder), nprocs=2,
                       start_method="fork")
    results = []
    for rank in range(2):
        err = folder / f"rank{rank}.err"
        results.append(err.read_text() if err.exists() else torch.load(folder / f"rank{rank}.pt"))
    return results


@pytest.mark.parametrize("batch_size", [4, 64])  # 5 batches over 2 ranks; 1 batch (rank 1 has none)
def test_sharded_extraction_equals_one_process(tmp_path, batch_size):
    from _fake_backbone import FakeBackbone, _write_images

    from ssp.features.extract import extract_features

    samples = _write_images(tmp_path / "images")
    kw = dict(views=3, seed=5, with_patches=True, batch_size=batch_size)
    single = extract_features(FakeBackbone(), samples, progress=False, num_workers=0, **kw)
    for got in _sharded(samples, tmp_path, "ok", **kw):
        assert isinstance(got, dict), got
        assert got.keys() == single.keys() == {"global", "labels", "local", "views"}
        for name in single:
            assert torch.equal(got[name], single[name]), name


def test_sharded_extraction_unreadable_images(tmp_path):
    from _fake_backbone import FakeBackbone, _write_images

    from ssp.features.extract import extract_features

    samples = _write_images(tmp_path / "images", n=9)
    Path(samples[6].path).write_bytes(b"not an image")  # found by rank 1 (batch 1 of 3, batch size 4)
    kw = dict(views=2, seed=1, batch_size=4)
    for got in _sharded(samples, tmp_path, "error", **kw):  # every rank stops with the same error
        assert got.startswith("ImageLoadError: cannot read image " + samples[6].path)
    good = samples[:6] + samples[7:]
    single = extract_features(FakeBackbone(), good, progress=False, num_workers=0, **kw)
    for got in _sharded(samples, tmp_path, "skip", skip_bad_images=True, **kw):
        assert isinstance(got, dict), got
        assert got["kept"].tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
        for name in single:
            assert torch.equal(got[name], single[name]), name

"""A corrupt or truncated image through the CLI (real subprocesses): a one-line error naming the file
and the fix, a non-zero exit, nothing half-written; ``--skip-bad-images`` goes on without it and lists it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _dtd_subset import dtd_subset
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_corrupt_image_error_and_skip_bad_images(data_root, tmp_path):
    split = dtd_subset(data_root, tmp_path, train=2, val=2, test=3)  # 2 shots = every train image
    entries = json.loads(split.read_text())

    def copy(root: Path) -> Path:
        for part in entries.values():
            for rel, _, _ in part:
                (root / "dtd/images" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(data_root / "coop/dtd/images" / rel, root / "dtd/images" / rel)
        return root

    root, only_bad = copy(tmp_path / "data"), copy(tmp_path / "data_only_bad")
    truncated = root / "dtd/images" / entries["test"][1][0]
    truncated.write_bytes(truncated.read_bytes()[:2000])
    garbage = root / "dtd/images" / entries["train"][0][0]  # the first class's first shot
    garbage.write_bytes(b"not a jpeg" * 20)
    for rel, _, _ in entries["train"][:2]:  # both shots of the first class unreadable
        (only_bad / "dtd/images" / rel).write_bytes(b"not a jpeg" * 20)

    def start(name: str, *extra: str, data: Path = root) -> subprocess.Popen:
        args = ["--dataset", "dtd", "--root", str(data), "--split-file", str(split), "--shots", "2", "--seeds", "1",
                "--methods", "zero-shot", "tip-adapter", "--backbone", str(REPO / "tests/assets/tiny-rn.json"),
                "--pretrained", "none", "--device", "cpu", "--views", "2", "--no-progress",
                "--output", str(tmp_path / name / "out"), "--feature-store", str(tmp_path / name / "cache"), *extra]
        return subprocess.Popen([sys.executable, "-m", "ssp.cli.fewshot", *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    failing, skipping = start("fail"), start("skip", "--skip-bad-images")  # all at once
    refusing = start("refuse", "--skip-bad-images", data=only_bad)
    _, err = failing.communicate(timeout=300)
    out_skip, err_skip = skipping.communicate(timeout=300)
    _, err_refuse = refusing.communicate(timeout=300)

    # without the flag: one clean line naming the file and the fix, exit 1, no feature file, no run
    assert failing.returncode == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last == (f"ssp-fewshot: error: cannot read image {truncated} (image file is truncated "
                    f"({last.split('image file is truncated (')[1].split(')')[0]})); replace or delete it, "
                    "or rerun with --skip-bad-images to go on without it")
    assert "Traceback" not in err and "DataLoader" not in err
    assert not (tmp_path / "fail/out").exists()
    cache = tmp_path / "fail/cache"
    assert not list(cache.rglob("features/**/*")) and not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]

    # with the flag: the run goes on; the images are named in the log and in every run JSON
    assert skipping.returncode == 0, err_skip[-2000:]
    assert f"skipping unreadable image {truncated}" in err_skip and f"skipping unreadable image {garbage}" in err_skip
    assert "2 unreadable image(s) left out" in out_skip
    runs = sorted((tmp_path / "skip/out").rglob("*.run.json"))
    assert len(runs) == 2
    for path in runs:
        record = json.loads(path.read_text())
        assert record["skipped_images"] == {"test": [str(truncated)], "support": [str(garbage)], "val": []}
        assert record["protocol"]["n_test"] == 8 and record["protocol"]["n_support"] == 5
    # the stored features are those of the images actually encoded (the key names the shorter list)
    for path in (tmp_path / "skip/cache/features").rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            key = json.loads(f.metadata()["key"])
            if key["kind"] == "features":
                assert key["num_samples"] == f.get_slice("labels").get_shape()[0]
                assert key["num_samples"] in (5, 6, 8)  # support 6 - 1, val 6, test 9 - 1

    # a class whose every shot is unreadable: refused (one line naming the class and the files), no run
    assert refusing.returncode == 1, err_refuse[-2000:]
    last = err_refuse.strip().splitlines()
    line = next(x for x in last if x.startswith("ssp-fewshot: error:"))
    assert "class 0 ('banded') has no readable training image left" in line and "--skip-bad-images" in line
    assert all(str(only_bad / "dtd/images" / rel) in line for rel, _, _ in entries["train"][:2])
    assert not list((tmp_path / "refuse/out").rglob("*.run.json"))

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
    split = dtd_subset(data_root, tmp_path, train=1, val=2, test=3)  # 1 shot = every train image
    root = tmp_path / "data"
    entries = json.loads(split.read_text())
    for part in entries.values():
        for rel, _, _ in part:
            (root / "dtd/images" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data_root / "coop/dtd/images" / rel, root / "dtd/images" / rel)
    truncated = root / "dtd/images" / entries["test"][1][0]
    truncated.write_bytes(truncated.read_bytes()[:2000])
    garbage = root / "dtd/images" / entries["train"][0][0]  # the first class's first shot
    garbage.write_bytes(b"not a jpeg" * 20)

    def start(name: str, *extra: str) -> subprocess.Popen:
        args = ["--dataset", "dtd", "--root", str(root), "--split-file", str(split), "--shots", "1", "--seeds", "1",
                "--methods", "zero-shot", "tip-adapter", "--backbone", str(REPO / "tests/assets/tiny-rn.json"),
                "--pretrained", "none", "--device", "cpu", "--views", "2", "--no-progress",
                "--output", str(tmp_path / name / "out"), "--cache-dir", str(tmp_path / name / "cache"), *extra]
        return subprocess.Popen([sys.executable, "-m", "ssp.cli.fewshot", *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    failing, skipping = start("fail"), start("skip", "--skip-bad-images")  # both at once
    _, err = failing.communicate(timeout=300)
    out_skip, err_skip = skipping.communicate(timeout=300)

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
        assert record["protocol"]["n_test"] == 8 and record["protocol"]["n_support"] == 2
    # the stored features are those of the images actually encoded (the key names the shorter list)
    for path in (tmp_path / "skip/cache/features").rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            key = json.loads(f.metadata()["key"])
            if key["kind"] == "features":
                assert key["num_samples"] == f.get_slice("labels").get_shape()[0]
                assert key["num_samples"] in (2, 6, 8)  # support 3 - 1, val 6, test 9 - 1

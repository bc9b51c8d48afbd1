"""Issue 27 item 5 (ssp-fewshot, ssp-unmix): messages that name the right file and say the fix."""
from __future__ import annotations

import json

import torch
from _cli import run_cli
from _tip_cache_folder import write_tip_cache

FAST = ["--shots", "1", "--seeds", "1", "--methods", "zero-shot", "--no-progress"]


def test_text_features_replace_a_corrupt_text_classifier_of_the_cache(tmp_path):
    cache = write_tip_cache(tmp_path / "dtd", dim=8)
    (cache / "text_weights.pt").write_bytes(b"not a tensor")
    done = run_cli("ssp.cli.fewshot", "--features", cache, *FAST, "--output", tmp_path / "out")
    assert done.returncode == 1 and str(cache / "text_weights.pt") in done.stderr  # the file that is read
    given = tmp_path / "mine.pt"
    torch.save(torch.nn.functional.normalize(torch.randn(47, 8), dim=1), given)
    done = run_cli("ssp.cli.fewshot", "--features", cache, "--text-features", given, *FAST, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    (path,) = (tmp_path / "out").rglob("*.run.json")
    assert json.loads(path.read_text())["text_features"]["file"] == str(given.resolve())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    done = run_cli("ssp.cli.fewshot", "--features", cache, "--text-features", bad, *FAST, "--output", tmp_path / "o2")
    assert done.returncode == 1 and str(bad) in done.stderr and "text_weights.pt" not in done.stderr


def test_unknown_device_is_one_line_with_the_fix(tmp_path):
    cache = write_tip_cache(tmp_path / "dtd")
    done = run_cli("ssp.cli.fewshot", "--features", cache, *FAST, "--device", "tpu", "--output", tmp_path / "out")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "device 'tpu'" in done.stderr and "cpu, cuda, cuda:N" in done.stderr
    assert "Expected one of" not in done.stderr  # not torch's list of device types
    unmix = run_cli("ssp.cli.unmix", "train", "--features", cache, "--shots", "1", "--device", "tpu", "--no-progress",
                    "--output", tmp_path / "u")
    assert unmix.returncode == 1 and "device 'tpu'" in unmix.stderr and "Expected one of" not in unmix.stderr


def test_prompts_folder_says_it_is_a_folder(data_root, tmp_path):
    from _dtd_subset import dtd_subset

    split = dtd_subset(data_root, tmp_path / "split", classes=2, train=1, val=1, test=1)
    done = run_cli("ssp.cli.fewshot", "--dataset", "dtd", "--root", data_root / "coop", "--split-file", split,
                   "--prompts", tmp_path, *FAST,
                   "--output", tmp_path / "out", "--pretrained", "none", "--device", "cpu")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"prompts {tmp_path} is a folder" in done.stderr and "not found" not in done.stderr

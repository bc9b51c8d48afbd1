"""``--prompts`` end to end: the choice reaches the text classifier, the run JSON's text_features
block and its settings key; bad files and feature caches give one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from _dtd_subset import dtd_subset

from ssp.cli.fewshot import main

ASSETS = Path(__file__).parents[1] / "assets"


def _args(data_root: Path, tmp_path: Path, split: Path, *extra: str) -> list[str]:
    return ["--dataset", "dtd", "--root", str(data_root / "coop"), "--split-file", str(split),
            "--backbone", str(ASSETS / "tiny-rn.json"), "--pretrained", "none", "--device", "cpu",
            "--views", "1", "--shots", "1", "--seeds", "1", "--methods", "zero-shot",
            "--num-workers", "0", "--output", str(tmp_path / "out"), "--feature-store", str(tmp_path / "cache"),
            "--no-progress", *extra]


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("*.run.json"))]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:backbone .* is RANDOMLY INITIALISED")
def test_prompt_choice_is_recorded_and_keys_the_run(data_root, tmp_path, capsys):
    split = dtd_subset(data_root, tmp_path / "split", classes=2, train=1, val=1, test=2)
    classes = [c for _, _, c in json.loads(split.read_text())["train"]]
    assert main(_args(data_root, tmp_path, split)) == 0
    cupl = tmp_path / "cupl.json"
    cupl.write_text(json.dumps({c: [f"a close-up of {c} fabric.", f"{c} surface."] for c in classes}))
    assert main(_args(data_root, tmp_path, split, "--prompts", f"clip-ensemble+{cupl}")) == 0
    out = capsys.readouterr().out
    assert f"prompts clip-ensemble+{cupl}" in out  # the table's settings line names the choice
    records = _records(tmp_path / "out")
    assert len(records) == 2 and len({r["settings_key"] for r in records}) == 2  # two files, never shared
    by_choice = {r["text_features"]["prompts"]["prompts"]: r for r in records}
    assert set(by_choice) == {"dataset", f"clip-ensemble+{cupl}"}
    assert "prompts" not in by_choice["dataset"]["settings"]  # the default keeps earlier runs' keys
    assert by_choice["dataset"]["text_features"]["templates"] == ["{} texture."]
    mixed = by_choice[f"clip-ensemble+{cupl}"]
    assert mixed["settings"]["prompts"]["templates"][0] == "a photo of a {} texture."
    assert mixed["text_features"]["prompts"]["sentences_per_class"] == [8 + 2]
    assert mixed["settings"]["prompts"]["file"] == str(cupl.resolve())
    assert len(mixed["settings"]["prompts"]["file_sha256"]) == 64


@pytest.mark.filterwarnings("ignore:backbone .* is RANDOMLY INITIALISED")
def test_a_class_missing_from_the_file_is_a_one_line_error(data_root, tmp_path, capsys):
    split = dtd_subset(data_root, tmp_path / "split", classes=2, train=1, val=1, test=1)
    cupl = tmp_path / "cupl.json"
    cupl.write_text(json.dumps({"banded": ["stripes."]}))
    with pytest.raises(SystemExit) as err:
        main(_args(data_root, tmp_path, split, "--prompts", str(cupl)))
    message = str(err.value)
    assert message.startswith("ssp-fewshot: error: prompts file") and "has no sentences for class" in message
    assert str(cupl) in message and "Traceback" not in message
    assert not list((tmp_path / "out").rglob("*.run.json"))


def test_feature_caches_refuse_prompts(tip_cache_root, tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["--features", str(tip_cache_root / "stanford_cars"), "--test-from-val", "0.5", "--shots", "1",
              "--seeds", "1", "--methods", "zero-shot", "--prompts", "single", "--output", str(tmp_path / "out")])
    assert "a Tip-Adapter cache folder has no text encoder" in str(err.value) and "--text-features" in str(err.value)

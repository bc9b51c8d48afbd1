"""Configuration merging/validation and the results report (JSON -> table -> plot)."""
from __future__ import annotations

import json

import pytest

from ssp.report.tables import format_table, load_runs, summarize, write_report
from ssp.run.config import builtin_config_names, load_config, merge
from ssp.run.records import write_run

DATASETS = ["caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet", "oxford_flowers",
            "oxford_pets", "stanford_cars", "sun397", "ucf101"]


def test_every_benchmark_has_a_config_with_its_published_grid():
    assert builtin_config_names() == sorted(DATASETS)
    cars = load_config("stanford_cars")
    assert cars["tip_adapter"]["search_scale"] == [20, 10]
    assert cars["ape"]["search_scale"] == [10, 7, 1]
    assert cars["ape"]["n_channels"] * 1024 == 500  # a fraction of D: the published 500 of RN50's 1024
    assert cars["shots"] == [1, 2, 4, 8, 16] and cars["seeds"] == [1, 2, 3]
    imagenet = load_config("imagenet")
    assert imagenet["ape"]["search_step"] == [200, 20, 5]


def test_overrides_and_user_file_win(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("views: 3\nape: {n_channels: 64}\n")
    cfg = load_config("dtd", user, {"shots": [1, 2], "backbone": None})
    assert cfg["views"] == 3 and cfg["ape"]["n_channels"] == 64
    assert cfg["ape"]["search_scale"] == [7, 7, 1]  # untouched keys survive a nested override
    assert cfg["shots"] == [1, 2] and cfg["backbone"] == "RN50"  # None override ignored


def test_merge_is_recursive_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}}
    out = merge(base, {"a": {"b": 5}})
    assert out == {"a": {"b": 5, "c": 2}} and base == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize("override, message", [
    ({"methods": ["tip-adaptr"]}, "unknown method"),
    ({"shots": [0]}, "shots must be >= 1"),
    ({"seeds": []}, "seeds"),
    ({"val_policy": "half"}, "val_policy"),
    ({"ssp": {"routing": ["both"]}}, "routing"),
])
def test_invalid_config_values_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("dtd", overrides=override)


def test_bad_yaml_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("views: [1,\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config("dtd", bad)


def _record(method, shots, seed, acc):
    return {"dataset": "dtd", "backbone": {"name": "RN50"}, "method": method, "shots": shots, "seed": seed,
            "val_accuracy": acc + 1.0, "test_accuracy": acc}


def test_summary_mean_and_sample_std_over_seeds(tmp_path):
    for seed, acc in [(1, 50.0), (2, 52.0), (3, 54.0)]:
        write_run(tmp_path, _record("tip-adapter+ssp", 4, seed, acc))
    write_run(tmp_path, _record("zero-shot", 4, 1, 40.0))
    runs = load_runs(tmp_path)
    assert len(runs) == 4
    rows = {r["method"]: r for r in summarize(runs)}
    assert rows["tip-adapter+ssp"]["mean"] == pytest.approx(52.0)
    assert rows["tip-adapter+ssp"]["std"] == pytest.approx(2.0)  # sample std of 50, 52, 54
    assert rows["zero-shot"]["std"] is None  # one seed: no std, not a fake 0
    table = format_table(summarize(runs))
    lines = table.splitlines()
    assert "52.00 ± 2.00" in table and "4-shot" in lines[1]
    assert "40.00" in lines[3] and "±" not in lines[3]
    # methods in canonical order: zero-shot before tip-adapter+ssp
    assert [ln.split()[0] for ln in lines[3:]] == ["zero-shot", "tip-adapter+ssp"]


def test_write_report_files(tmp_path):
    for shots in (1, 2):
        write_run(tmp_path, _record("ape", shots, 1, 30.0 + shots))
    table, paths = write_report(tmp_path)
    assert "31.00" in table and "32.00" in table and "one seed (no std)" in table
    assert paths["plot"].stat().st_size > 1000
    summary = json.loads(paths["summary"].read_text())
    assert {r["shots"] for r in summary["test"]} == {1, 2}
    assert not list(tmp_path.rglob("*.tmp"))


def test_unreadable_run_file_is_named(tmp_path):
    write_run(tmp_path, _record("ape", 1, 1, 30.0))
    bad = next(tmp_path.rglob("*.run.json"))
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=bad.name):
        load_runs(tmp_path)


def test_report_without_runs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run results"):
        write_report(tmp_path)


def test_runs_of_other_settings_are_never_averaged_together(tmp_path):
    from ssp.run.records import run_filename

    def rec(seed, acc, key, protocol):
        return {**_record("ape", 4, seed, acc), "settings_key": key, "protocol_key": protocol,
                "protocol_summary": f"protocol {protocol}"}

    runs = [rec(1, 50.0, "aaa", "p1"), rec(2, 52.0, "aaa", "p1"), rec(1, 70.0, "bbb", "p1"), rec(1, 60.0, "ccc", "p2")]
    assert len({run_filename(r) for r in runs}) == 4 and "/ape/aaa/4shot_seed1.run.json" in run_filename(runs[0])
    rows = summarize(runs)
    labels = {(r["protocol_key"], r["method"]): r["mean"] for r in rows}
    # same protocol, two method settings: two rows, labelled with their keys; another protocol: its own block
    assert labels == {("p1", "ape [aaa]"): 51.0, ("p1", "ape [bbb]"): 70.0, ("p2", "ape"): 60.0}
    table = format_table(rows)
    assert "settings p1: protocol p1" in table and "settings p2: protocol p2" in table


def test_numbers_are_written_without_float_noise(tmp_path):
    from ssp._io import clean_floats
    from ssp.run.records import settings_key

    assert clean_floats({"beta": 2.8600000000000003, "x": [0.1 + 0.2], "n": 3}) == {"beta": 2.86, "x": [0.3], "n": 3}
    assert settings_key({"a": 0.1 + 0.2}) == settings_key({"a": 0.3})
    write_run(tmp_path, {**_record("ape", 1, 1, 30.0), "hyperparameters": {"beta": 2.8600000000000003}})
    assert "2.8600000000000003" not in next(tmp_path.rglob("*.run.json")).read_text()


@pytest.mark.parametrize("text, message", [
    ("n_chanels: 100\n", "unknown config key 'n_chanels'; did you mean 'ape.n_channels' or 'ape_t.n_channels'?"),
    ("shotz: [1]\n", "unknown config key 'shotz'; did you mean 'shots'?"),
    ("ape:\n  n_chanels: 100\n", "unknown config key 'ape.n_chanels'; did you mean 'ape.n_channels'?"),
    ("tip_adapter:\n  search_scale: 7\n", "'tip_adapter.search_scale' must be a list"),
    ("tip_adapter:\n  search_step: [200, 2.5]\n", "search_step' must hold positive integers"),
    ("views: [1]\n", "'views' must be a number"),
    ("ssp: 3\n", "'ssp' must be a mapping"),
])
def test_unknown_keys_and_wrong_kinds_name_the_key_and_the_nearest_name(tmp_path, text, message):
    bad = tmp_path / "mine.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError) as err:
        load_config("dtd", bad)
    assert message in str(err.value)
    if "search_step" not in text:  # key errors name the file; value checks after merging name the key
        assert "mine.yaml" in str(err.value)

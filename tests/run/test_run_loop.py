"""The one run loop (ssp.run.pipeline.run_fewshot) and what a careless user meets through
``ssp-fewshot`` / ``ssp-reproduce`` (in-process ``main(argv)``), on a small synthetic Tip-Adapter
cache folder: resume, locks, interrupts, warnings, early checks of flags, config and output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import cli_error, run_cli
from _tip_cache_folder import write_tip_cache

from ssp.cli import fewshot, reproduce
from ssp.run import pipeline
from ssp.run.config import load_config
from ssp.run.pipeline import WarningLog, run_fewshot
from ssp.run.records import RunLock, check_writable
from ssp.run.cache_source import TipCacheSource, cache_dataset_name

FAST = ["--shots", "1", "2", "--seeds", "1", "--methods", "zero-shot", "tip-adapter", "--no-progress",
        "--device", "cpu"]


@pytest.fixture()
def cache(tmp_path) -> Path:
    return write_tip_cache(tmp_path / "caches" / "dtd")


def _runs(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("*.run.json"))]


def test_resume_is_the_default_and_rerun_redoes(cache, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, _ = run_cli(fewshot, "--features", cache, *FAST, "--output", out)
    assert code == 0 and len(_runs(out)) == 4
    first = {r["method"] + str(r["shots"]): r["created"] for r in _runs(out)}
    code, text, _ = run_cli(fewshot, "--features", cache, *FAST, "--output", out)
    assert code == 0 and "all 4 runs already done" in text
    assert {r["method"] + str(r["shots"]): r["created"] for r in _runs(out)} == first
    code, text, _ = run_cli(fewshot, "--features", cache, *FAST, "--output", out, "--rerun")
    assert code == 0 and "already done" not in text and len(_runs(out)) == 4


def test_a_run_with_older_reliability_definitions_is_run_again(cache, tmp_path, capsys):
    """A record computed under older metric definitions (version 1: deterministic APS) is not
    reused beside new ones: it is run again, its file replaced, and the log says so."""
    out = tmp_path / "out"
    assert run_cli(fewshot, "--features", cache, *FAST, "--output", out)[0] == 0
    path = sorted(out.rglob("*.run.json"))[0]
    old = json.loads(path.read_text())
    old["reliability"].pop("version")
    old["created"] = "2026-01-01T00:00:00+00:00"
    path.write_text(json.dumps(old))
    code, text, _ = run_cli(fewshot, "--features", cache, *FAST, "--output", out)
    assert code == 0 and "1 run(s) under" in text and "older definition" in text
    assert "3 of 4 runs already done" in text
    new = json.loads(path.read_text())
    assert new["reliability"]["version"] == 2 and new["created"] != old["created"]
    assert new["test_accuracy"] == old["test_accuracy"]
    # a record made before reliability metrics existed is kept as it is (empty reliability cells)
    new.pop("reliability")
    path.write_text(json.dumps(new))
    code, text, _ = run_cli(fewshot, "--features", cache, *FAST, "--output", out)
    assert code == 0 and "all 4 runs already done" in text


def test_cache_runs_name_their_classes_from_the_shipped_split_file(cache, tmp_path, capsys):
    import numpy as np

    from ssp.data.catalog import official_classnames

    out = tmp_path / "out"
    assert run_cli(fewshot, "--features", cache, *FAST, "--output", out)[0] == 0
    record = _runs(out)[0]
    path = next(out.rglob(record["samples"]["file"]))
    names = np.load(path)["class_names"].tolist()
    assert names == official_classnames("dtd") and len(names) == 47
    assert "split file shipped with ssp for dtd" in record["source"]["class_names"]
    # a benchmark without a shipped split file: its cache runs record no names
    food = TipCacheSource(load_config("food101", overrides={"shots": [1]}), test_from_val=0.5,
                          folder=write_tip_cache(tmp_path / "food101", n_classes=101))
    assert food.class_names() is None and food.record_fields()["source"]["class_names"] is None


def test_interrupt_reports_the_runs_finished_in_this_call(cache, tmp_path, capsys, monkeypatch):
    real = pipeline.run_method
    calls = {"n": 0}

    def interrupt_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run_method", interrupt_third)
    out = tmp_path / "out"
    code, _, err = run_cli(fewshot, "--features", cache, *FAST, "--output", out)
    assert code == 130
    assert "2 run(s) finished in this call" in err and "rerun the same command to resume" in err
    assert len(_runs(out)) == 2
    # the suite says the same
    monkeypatch.setattr(pipeline, "run_method", interrupt_third)
    calls["n"] = 0
    code, _, err = run_cli(reproduce, "--features-root", cache.parent, "--datasets", "dtd", *FAST,
                           "--output", tmp_path / "suite")
    assert code == 130 and "2 run(s) finished in this call" in err


def test_warnings_live_in_one_place_and_print_once(cache, tmp_path, capsys):
    cfg_file = tmp_path / "grid.yaml"
    # more APE channels than the 8 feature dimensions: clamped, with a warning in every run
    cfg_file.write_text("ape: {n_channels: 50, search_step: [5, 3, 3]}\n")
    out = tmp_path / "out"
    code, text, _ = run_cli(fewshot, "--features", cache, *FAST, "--seeds", "1", "2", "--methods", "ape",
                                    "--config", cfg_file, "--output", out)
    assert code == 0
    records = _runs(out)
    with_warnings = [r for r in records if r["warnings"]]
    assert with_warnings and all("warnings" not in r["details"] for r in records)
    printed = [line for line in text.splitlines() if line.startswith("[ssp] warning (ape)")]
    assert len(printed) < sum(len(r["warnings"]) for r in records)   # each kind once, not per run
    assert "each kind shown once above" in text


def test_warning_log_groups_messages_that_differ_only_in_numbers():
    lines = []
    log = WarningLog(lines.append)
    log.add("ape", ["optimum at alpha=2.855", "optimum at alpha=0.68", "n_channels=800 exceeds D=512"])
    log.add("ape", ["n_channels=800 exceeds D=512"])
    log.add("tip-adapter", ["optimum at alpha=1.5"])
    log.summary()
    assert lines[:2] == ["[ssp] warning (ape): optimum at alpha=2.855", "[ssp] warning (ape): n_channels=800 "
                         "exceeds D=512"]
    assert "5 warning(s) in all" in lines[2]
    assert lines[3:] == ["  3 x optimum at alpha=#: ape 2, tip-adapter 1", "  2 x n_channels=# exceeds D=#: ape 2"]


def test_grid_edge_warnings_of_every_method_are_one_kind_per_axis_and_side():
    """20 grid-edge warnings of a 28-run demo: one line per (axis, side), not one per method."""
    lines = []
    log = WarningLog(lines.append)
    edge = ("validation_search: the best validation accuracy along {a} is reached at the largest value of the "
            "given grid ({a}={v}, chosen), so the optimum may lie above the grid; extend grid")
    tie = ("validation_search: the chosen {a}={v} ties with the smallest value of the given grid ({a}=0.1): the "
           "validation accuracy is the same at both")
    for i, method in enumerate(["tip-adapter", "ape", "gda", "proker", "ape+ssp", "gda+ssp"]):
        log.add(method, [edge.format(a="alpha", v=i + 1), tie.format(a="beta", v=0.2 * i)])
        log.add(method, [edge.format(a="alpha", v=i + 2)])
    log.summary()
    shown = [line for line in lines if line.startswith("[ssp] warning")]
    assert len(shown) == 2
    assert lines[-2] == ("  12 x search optimum at the largest alpha of the grid: tip-adapter 2, ape 2, gda 2, "
                         "proker 2, ape+ssp 2, gda+ssp 2")
    assert lines[-1].startswith("  6 x search optimum at the smallest beta of the grid: tip-adapter 1")


def test_a_run_another_live_process_holds_is_left_to_it(cache, tmp_path, capsys):
    cfg = load_config("dtd", overrides={"shots": [1], "seeds": [1], "methods": ["zero-shot", "tip-adapter"]})
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        source = TipCacheSource(cfg, folder=cache, device="cpu")
        stub = pipeline.plan_runs(cfg, source, ["tip-adapter"])[(1, 1, "tip-adapter")]
        lock = RunLock(out, stub)
        lock.path.parent.mkdir(parents=True)
        lock.path.write_text(f"{os.uname().nodename} {holder.pid}\n")
        with pytest.raises(RuntimeError, match="waited 0 s for another process"):
            run_fewshot(cfg, source, output_dir=out, echo=lambda _: None, wait_for_others=0.1)
        assert [r["method"] for r in _runs(out)] == ["zero-shot"]   # the free run was done here
    finally:
        holder.kill()
        holder.wait()
    # its holder is gone: the lock is stale, the run is taken over
    records = run_fewshot(cfg, TipCacheSource(cfg, folder=cache, device="cpu"), output_dir=out,
                          echo=lambda _: None)
    assert sorted(r["method"] for r in records) == ["tip-adapter", "zero-shot"] and not lock.path.exists()


def test_run_lock_acquire_release():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        stub = {"dataset": "x", "backbone": {"name": "b"}, "method": "m", "shots": 1, "seed": 1, "settings_key": "k"}
        a, b = RunLock(Path(d), stub), RunLock(Path(d), stub)
        assert a.acquire() and not b.acquire() and b.locked_by_other()
        a.release()
        assert b.acquire()
        b.release()
        assert not b.path.exists()


def test_conflicting_and_missing_flags_are_refused_before_any_work(cache, tmp_path, capsys):
    msg = cli_error(fewshot, "--features", cache, "--root", tmp_path, *FAST, "--output", tmp_path / "o")
    assert "--root and --features" in msg
    assert not (tmp_path / "o").exists()


def test_unwritable_output_is_one_line_before_any_work(cache, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    msg = cli_error(fewshot, "--features", cache, *FAST, "--output", blocker / "out")
    assert "is a file, not a folder" in msg and "--output" in msg
    msg = cli_error(fewshot, "--features", cache, *FAST, "--output", "/proc/ssp-out")
    assert "cannot write to output folder /proc/ssp-out" in msg and "writable --output" in msg
    msg = cli_error(reproduce, "--features-root", cache.parent, "--datasets", "dtd", *FAST, "--output",
                            blocker / "suite")
    assert "is a file, not a folder" in msg


def test_check_writable_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_writable(target) == target and not (tmp_path / "a").exists()


def test_bad_config_value_is_refused_before_any_run_naming_the_key(cache, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ape:\n  n_channels: -5\n")
    out = tmp_path / "out"
    msg = cli_error(fewshot, "--features", cache, *FAST, "--methods", "zero-shot", "ape", "--config", bad,
                          "--output", out)
    assert "config 'ape.n_channels'" in msg and "-5" in msg
    assert not out.exists()  # zero-shot did not run first


def test_yaml_syntax_error_names_file_line_column(cache, tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("shots: [1, 2\nseeds: [1]\n")
    msg = cli_error(fewshot, "--features", cache, *FAST, "--config", bad, "--output", tmp_path / "o")
    assert f"{bad}:2:" in msg and "not valid YAML" in msg and len(msg.splitlines()) == 1


@pytest.mark.parametrize("name, expected", [("fgvc", "fgvc_aircraft"), ("stanford_cars", "stanford_cars"),
                                            ("Oxford-Pets", "oxford_pets"), ("flowers102", "oxford_flowers"),
                                            ("my_features", None)])
def test_tip_adapter_cache_folder_names(tmp_path, name, expected):
    (tmp_path / name).mkdir()
    assert cache_dataset_name(tmp_path / name) == expected


def test_reproduce_dry_run_needs_no_output(capsys):
    code, text, _ = run_cli(reproduce, "--paper", "ape", "--dry-run")
    assert code == 0 and "dry run:" in text and "run(s) to do" in text


@pytest.mark.parametrize("layout", ["missing", "empty", "wrong"])
def test_reproduce_with_nothing_found_is_an_error(tmp_path, capsys, layout):
    root = tmp_path / "caches"
    if layout != "missing":
        root.mkdir()
    if layout == "wrong":
        (root / "not_a_dataset").mkdir()
    argv = ["--features-root", root, "--datasets", "dtd", "oxford_pets", *FAST, "--output", tmp_path / "o"]
    msg = cli_error(reproduce, *argv)
    assert ("no such folder" in msg) if layout == "missing" else ("no runs planned" in msg and "dtd" in msg)


def test_world_size_is_recorded(cache, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(fewshot, "--features", cache, *FAST, "--output", out)[0] == 0
    assert all(r["environment"]["world_size"] == 1 for r in _runs(out))


def test_progress_in_a_log_is_a_line_every_interval(capsys):
    from ssp._utils.progress import LogProgress

    clock = iter([0.0, 1.0, 11.0, 12.0, 25.0, 26.0, 27.0])
    bar = LogProgress(30, "extracting test", "img", interval=10.0)
    bar._clock = lambda: next(clock)
    bar._start = bar._last = 0.0
    for _ in range(3):
        bar.update(10)
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) <= 3 and lines[-1].startswith("[ssp] extracting test: 30/30 img (100%)")


def test_one_validation_subsampler_for_images_and_tip_adapter_cache_folders(tmp_path):
    """A Tip-Adapter cache folder's validation features are subsampled by the images path's rule."""
    import numpy as np

    from ssp.data.base import DatasetSplits, Sample
    from ssp.data.fewshot import make_fewshot_splits, validation_subsample

    labels = np.random.default_rng(0).integers(0, 4, 40).tolist()
    val = [Sample(f"v{i:03d}.jpg", y, f"c{y}") for i, y in enumerate(labels)]
    train = [Sample(f"t{i:03d}.jpg", c, f"c{c}") for i in range(3) for c in range(4)]
    ds = DatasetSplits("toy", tmp_path, [f"c{c}" for c in range(4)], ["{}"], train, val, [])
    for policy, shots, seed in (("coop", 2, 1), ("coop", 16, 3), (3, 1, 2), ("full", 4, 1)):
        drawn = {s.path for s in make_fewshot_splits(ds, shots, seed, val_policy=policy).val}
        kept = validation_subsample(labels, policy, shots, seed)
        assert {val[i].path for i in kept} == drawn and kept == sorted(kept)


def test_make_source_builds_one_source_and_refuses_the_other_sources_options(cache, tmp_path):
    from ssp.run.cache_source import TipCacheSource
    from ssp.run.sources import make_source

    cfg = load_config("dtd", overrides={"shots": [1], "seeds": [1]})
    source = make_source(cfg, features=cache, device="cpu")
    assert isinstance(source, TipCacheSource) and source.dataset == "dtd"
    for kwargs, named in (({"features": cache, "split_file": tmp_path / "s.json"}, "split_file"),
                          ({"features": cache, "recompute": True}, "recompute"),
                          ({"root": tmp_path, "test_from_val": 0.5}, "test_from_val"),
                          ({"root": tmp_path, "features": cache}, "exactly one"), ({}, "exactly one")):
        with pytest.raises(ValueError, match=named):
            make_source(cfg, **kwargs)


def test_a_cache_without_test_features_opens_for_training_only(tmp_path):
    from ssp.run.sources import make_source

    folder = write_tip_cache(tmp_path / "dtd", shots=(1,), with_test=False)
    cfg = load_config("dtd", overrides={"shots": [1], "seeds": [1], "val_policy": "full"})
    with pytest.raises(FileNotFoundError, match="no test features"):
        make_source(cfg, features=folder)
    split = make_source(cfg, features=folder, require_test=False).split(1, 1, lambda _: None)
    assert split.test is None and split.protocol["n_test"] == 0 and len(split.val.labels) == 47 * 6

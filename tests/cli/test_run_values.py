"""Issue 27 item 4: values a run cannot honour are refused (LP++ after zero steps, --top-k -3);
search grids far outside a method's sane range are run with a warning naming the key."""
from __future__ import annotations

import json

import pytest
from _cli import run_cli
from _tip_cache_folder import write_tip_cache

FAST = ["--shots", "1", "--seeds", "1", "--no-progress"]


@pytest.mark.parametrize("section, method", [("lpp", "lp++"), ("tip_adapter_f", "tip-adapter-f"),
                                             ("ape_t", "ape-t")])
def test_zero_training_steps_are_refused(tmp_path, section, method):
    cache = write_tip_cache(tmp_path / "dtd")
    config = tmp_path / "c.yaml"
    config.write_text(f"{section}: {{epochs: 0}}\n")
    done = run_cli("ssp.cli.fewshot", "--features", cache, "--config", config, "--methods", method, *FAST,
                   "--output", tmp_path / "out")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"config '{section}.epochs' must be >= 1" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_search_grid_far_outside_the_sane_range_is_warned_about(tmp_path, caplog):
    cache = write_tip_cache(tmp_path / "dtd")
    config = tmp_path / "c.yaml"
    config.write_text("gda: {search: {alpha: [1.0e-4, 1.0e+6, 3]}}\n")
    with caplog.at_level("WARNING", logger="ssp.run.config"):
        done = run_cli("ssp.cli.fewshot", "--features", cache, "--config", config, "--methods", "gda", *FAST,
                       "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "config 'gda.search.alpha'" in caplog.text and "1e+06 is far outside gda's sane range [1e-05, 100000]" \
        in caplog.text
    (path,) = (tmp_path / "out").rglob("*.run.json")
    assert json.loads(path.read_text())["config"]["gda"]["search"]["alpha"] == [1e-4, 1e6, 3]  # run as asked
    caplog.clear()
    with caplog.at_level("WARNING", logger="ssp.run.config"):
        assert run_cli("ssp.cli.fewshot", "--features", cache, "--methods", "gda", *FAST, "--output",
                       tmp_path / "o2").returncode == 0
    assert "sane range" not in caplog.text  # the shipped grid is inside


def test_unmix_analyze_refuses_a_negative_top_k(tmp_path):
    done = run_cli("ssp.cli.unmix", "analyze", "--top-k", "-3", "--output", tmp_path / "out")
    assert done.returncode == 2 and "--top-k" in done.stderr and "must be a positive integer" in done.stderr
    assert not (tmp_path / "out").exists()


def test_every_log_grid_axis_declares_a_sane_range_holding_its_shipped_grid():
    from ssp.methods.registry import registered_methods
    from ssp.run.config import load_config

    cfg = load_config("dtd")
    checked = 0
    for spec in registered_methods():
        grid = (cfg.get(spec.search_section or "") or {}).get("search") or {}
        for axis in spec.search_axes:
            if not (isinstance(grid.get(axis), list) and len(grid[axis]) == 3):
                continue  # not log-spaced [low, high, points]: a value list (TIMO-S's gamma, text_fraction)
            low, high, _ = grid[axis]
            sane = spec.estimator.search_space[axis].sane
            assert sane is not None and sane[0] < low <= high < sane[1], (spec.name, axis)
            checked += 1
    assert checked >= 6  # gda alpha, proker beta and lam, linear-probe C, timo and timo-s alpha


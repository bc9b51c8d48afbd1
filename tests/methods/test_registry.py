"""The method registry: one table read by the CLI, the experiment runner and the search."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _doubles import make_data

from ssp.methods.registry import (
    get_method,
    method_names,
    parse_method,
    register_method,
    registered_methods,
    spec_for_estimator,
)
from ssp.methods import make_grid, validation_search
from ssp.run.config import METHODS, load_config


def test_every_method_has_an_ssp_variant_and_the_cli_config_and_report_share_the_table():
    names = [s.name for s in registered_methods()]
    assert {"zero-shot", "tip-adapter", "ape"} <= set(names)
    assert METHODS == method_names()
    # every method but the test-time ones (no labelled support to fit SSP's projector on) has +ssp
    assert all(n in METHODS and (n + "+ssp" in METHODS) != s.test_time for n, s in zip(names, registered_methods()))
    from ssp.cli.fewshot import build_parser

    action = next(a for a in build_parser()._actions if a.dest == "methods")
    assert all(n in action.help for n in METHODS)           # the help lists the table
    assert "tda+ssp" not in action.help and "dmn-zs+ssp" not in action.help
    assert action.type("lpp+ssp") == "lp+++ssp" and action.type("tip") == "tip-adapter"
    from ssp.methods.registry import canonical_name

    with pytest.raises(ValueError, match="tda is a test-time method .* nothing of SSP carries over"):
        canonical_name("tda+ssp")
    with pytest.raises(ValueError, match="unknown method 'nope\\+ssp'"):
        canonical_name("nope+ssp")


@pytest.mark.parametrize("spelling, name", [
    ("tip", "tip-adapter"), ("tip_adapter", "tip-adapter"), ("Tip-Adapter", "tip-adapter"),
    ("TIPADAPTER", "tip-adapter"), ("ape", "ape"), ("zs", "zero-shot"), ("zero_shot", "zero-shot"),
])
def test_aliases(spelling, name):
    assert get_method(spelling).name == name
    spec, use_ssp = parse_method(spelling + "+ssp")
    assert spec.name == name and use_ssp
    assert parse_method(spelling) == (get_method(name), False)


def test_unknown_and_duplicate_names_are_rejected():
    with pytest.raises(ValueError, match="unknown method 'coop'"):
        get_method("coop")
    class Dummy:
        pass

    with pytest.raises(ValueError, match="already used"):
        register_method("tip", title="x")(Dummy)
    with pytest.raises(ValueError, match="one value per search axis"):
        register_method("new-one", title="x", search_axes=("beta",), grid_start=(0.1, 0.0))(Dummy)
    assert "new-one" not in method_names()


@pytest.mark.parametrize("spec", registered_methods(), ids=lambda s: s.name)
def test_each_entry_builds_its_estimator_from_the_shipped_config(spec):
    cfg = load_config("stanford_cars")
    model = spec.build(cfg, n_features=512, device="cpu")
    assert isinstance(model, spec.estimator)
    assert spec_for_estimator(model) is spec
    params = model.get_params()
    if spec.config_section is not None:
        for key, value in cfg[spec.config_section].get("init", {}).items():
            assert params[key] == value  # constructor values come from the config section
    grid = spec.grid(cfg)
    if spec.search_axes:
        sec = cfg[spec.search_section]
        if spec.grid_builder is not None:  # a method that builds its own (e.g. log-spaced) grid
            expected = spec.grid_builder(spec, sec)
        else:
            expected = make_grid(spec.name, sec["search_scale"], sec["search_step"])
        assert list(grid) == list(spec.search_axes)
        for axis in spec.search_axes:
            np.testing.assert_array_equal(grid[axis], expected[axis])
        assert spec.grid(None).keys() == grid.keys()  # the default grid has the same axes
    else:
        assert grid is None


def test_search_reads_the_axes_of_a_subclass_from_its_registered_base():
    from ssp.methods.cache_models import TipAdapter

    class MyTip(TipAdapter):
        pass

    text, support, labels, val, val_labels = make_data(seed=5)
    model = MyTip().fit(support, labels, text_features=text)
    assert spec_for_estimator(model).name == "tip-adapter"
    result = validation_search(model, val, val_labels, {"beta": [1.0, 3.0], "alpha": [0.5, 1.0]})
    assert result.param_names_ == ("beta", "alpha")

    class NotAMethod:
        pass

    assert spec_for_estimator(NotAMethod()) is None


def test_reading_the_table_and_the_cli_parser_imports_no_torch():
    code = ("import sys; from ssp.cli.fewshot import build_parser; from ssp.methods.registry import method_names, "
            "registered_methods; build_parser().format_help(); method_names(); "
            "assert all(isinstance(s.estimator, type) for s in registered_methods()); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_log_grid_builder_reads_and_checks_its_config_keys():
    from ssp.methods.registry import get_method

    spec = get_method("gda")
    np.testing.assert_allclose(spec.grid({"gda": {"search": {"alpha": [0.1, 10.0, 3]}}})["alpha"], [0.1, 1.0, 10.0])
    np.testing.assert_allclose(spec.grid(None)["alpha"], 10.0 ** np.arange(-4, 5))
    for bad, match in (({"alpha": [0.0, 1.0, 3]}, r"gda.search.alpha' must be \[low, high, points\]"),
                       ({"alpha": [1.0, 10.0, 2.5]}, "gda.search.alpha"),
                       ({"beta": [1.0, 2.0, 2]}, "unknown axes")):
        with pytest.raises(ValueError, match=match):
            spec.grid({"gda": {"search": bad}})
    with pytest.raises(ValueError, match="builds its own grid"):
        make_grid("gda", (1.0,), (3,))

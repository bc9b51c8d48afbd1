"""One home for every method's defaults: the packaged configs/defaults.yaml. The registered
methods' default grids and their estimators' constructor defaults equal it, values included."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from ssp.methods import SSPProjector
from ssp.methods.registry import default_config, get_method, make_grid, registered_methods

# The one deliberate difference: APE / APE-T built by hand use every channel (n_channels=None);
# the configs ask for the published channel counts, as fractions of D.
LIBRARY_ONLY = {("ape", "n_channels"), ("ape-t", "n_channels")}


def _constructor_defaults(cls) -> dict:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) \
            and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b if not isinstance(a, (int, float)) else a == b and not (
        isinstance(a, bool) ^ isinstance(b, bool))


@pytest.mark.parametrize("spec", registered_methods(), ids=lambda s: s.name)
def test_constructor_defaults_equal_the_default_config(spec):
    cfg = default_config()
    configured = spec.constructor_params(cfg, 1024)
    defaults = _constructor_defaults(spec.estimator)
    assert set(configured) <= set(defaults), f"{spec.name}: config keys that are no parameter"
    for name, value in configured.items():
        if (spec.name, name) in LIBRARY_ONLY:
            continue
        assert _same(value, defaults[name]), f"{spec.name}.{name}: config {value!r} != constructor {defaults[name]!r}"
    assert spec.params is None or configured, f"{spec.name} reads nothing from its config section"


@pytest.mark.parametrize("spec", [s for s in registered_methods() if s.search_axes], ids=lambda s: s.name)
def test_default_grid_is_the_default_config(spec):
    section = default_config()[spec.search_section]
    grid = spec.grid(None)
    assert list(grid) == list(spec.search_axes)
    for axis, values in grid.items():
        if spec.grid_builder is not None and len(section["search"][axis]) != 3:  # a list of values (TIMO-S)
            np.testing.assert_array_equal(values, np.asarray(section["search"][axis], dtype=np.float64))
        elif spec.grid_builder is not None:      # log-spaced [low, high, points]
            low, high, points = section["search"][axis]
            np.testing.assert_array_equal(values, np.geomspace(low, high, points))
        else:                                    # make_grid's linear grids
            i = spec.search_axes.index(axis)
            scale, step = section["search_scale"][i], section["search_step"][i]
            start = spec.linear_grid_start()[i]
            np.testing.assert_array_equal(values, np.arange(step) * (scale - start) / step + start)
            np.testing.assert_array_equal(make_grid(spec.name)[axis], values)
    # a config that leaves the section out gets the same grid
    for a, b in zip(grid.values(), spec.grid({}).values()):
        np.testing.assert_array_equal(a, b)


def test_projector_defaults_equal_the_default_config():
    ssp = default_config()["ssp"]
    defaults = _constructor_defaults(SSPProjector)
    for name in ("patch_top_k", "class_top_k", "global_weight", "score_precision"):
        assert _same(ssp[name], defaults[name]), name
    assert ssp["rank"][0] == defaults["rank"] is None


def test_published_grids_are_the_reference_ones():
    """The values themselves (the official Tip-Adapter / APE configs), not only their home."""
    tip, ape = make_grid("tip-adapter"), make_grid("ape")
    assert (len(tip["beta"]), len(tip["alpha"])) == (200, 20)
    assert tip["beta"][0] == 0.1 and tip["beta"][-1] == pytest.approx(0.1 + 199 * 6.9 / 200)
    assert ape["gamma"][0] == 0.0 and ape["gamma"][-1] == pytest.approx(19 / 20)
    assert get_method("gda").grid(None)["alpha"].tolist() == pytest.approx(np.logspace(-4, 4, 9).tolist())

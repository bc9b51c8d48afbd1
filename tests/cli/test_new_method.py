"""Adding a method is one module with a decorated class, its config section and its tests: a toy
method written to a temporary module runs through ``ssp-fewshot`` (in-process) with nothing else
touched; the config names the module (``method_modules``) and holds the method's section."""
from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
from _tip_cache_folder import write_tip_cache

from ssp.cli import fewshot
from ssp.methods import registry
from ssp.methods.registry import registered_methods

TOY_MODULE = '''
"""A toy method: zero-shot CLIP plus a weighted nearest-class-mean term."""
from ssp._checks import ROUTINGS
from ssp._lazy import torch
from ssp.methods.base import CLIPFeatureClassifier
from ssp._utils.params import Options, Real
from ssp.methods.registry import log_grid_builder, register_method


def _params(cfg, dim):
    return dict(cfg["toy_mean"]["init"])


@register_method("toy-mean", title="Toy mean", config_section="toy_mean", search_section="toy_mean",
                 search_axes=("weight",), params=_params, grid_builder=log_grid_builder("weight"))
class ToyMean(CLIPFeatureClassifier):
    """``s · x Wᵀ + weight · x Mᵀ`` with ``M`` [C, D] the class means of the support features."""

    _parameter_constraints = {"weight": [Real(0)], "routing": [Options(ROUTINGS)], "logit_scale": [Real()]}

    def __init__(self, *, weight=1.0, projector=None, routing="paper", logit_scale=100.0, device=None):
        self.weight = weight
        self.projector = projector
        self.routing = routing
        self.logit_scale = logit_scale
        self.device = device

    def _fit(self, image_features, labels, text_features, patch_features=None):
        self._fit_common(image_features, labels, text_features, patch_features)
        t = self._torch
        sums = torch.zeros_like(t.text_features_).index_add_(0, t.support_labels_, t.support_features_)
        t.class_means_ = sums / t.class_counts_.clamp_min(1)[:, None].to(sums.dtype)

    def _logits(self, x):
        zs_view, _, view = self._route()
        views = self._views(x, {zs_view, view} - {"plain"})
        return self._zero_shot_logits(views) + float(self.weight) * (views[view] @ self._torch.class_means_.T)
'''


@pytest.fixture()
def isolated_registry(monkeypatch):
    """The method table as it was after the test (the toy method is not left registered)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    yield
    sys.modules.pop("toy_mean_method", None)


def test_a_toy_method_in_a_temporary_module_runs_through_ssp_fewshot(tmp_path, monkeypatch, capsys,
                                                                       isolated_registry):
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "toy_mean_method.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(plugin))
    config = tmp_path / "toy.yaml"
    config.write_text(textwrap.dedent("""\
        method_modules: [toy_mean_method]
        toy_mean:
          init: {weight: 1.0}
          search: {weight: [0.1, 10.0, 5]}
    """))
    cache = write_tip_cache(tmp_path / "caches" / "dtd")
    out = tmp_path / "out"
    argv = ["--features", cache, "--config", config, "--methods", "zero-shot", "toy-mean", "--shots", "1", "2",
            "--seeds", "1", "--device", "cpu", "--no-progress", "--output", out]
    assert fewshot.main([str(a) for a in argv]) == 0
    table = capsys.readouterr().out
    assert any(line.split()[:1] == ["toy-mean"] for line in table.splitlines())
    runs = {(r["method"], r["shots"]): r for r in map(json.loads, map(lambda p: p.read_text(),
                                                                      out.rglob("*.run.json")))}
    assert set(runs) == {(m, k) for m in ("zero-shot", "toy-mean") for k in (1, 2)}
    toy = runs[("toy-mean", 2)]
    assert np.isclose(np.geomspace(0.1, 10.0, 5), toy["hyperparameters"]["weight"], rtol=1e-12).any()
    assert 0.0 <= toy["test_accuracy"] <= 100.0
    assert "toy-mean" in [s.name for s in registered_methods()]


def test_an_unimportable_method_module_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("method_modules: [no_such_module_for_ssp]\n")
    cache = write_tip_cache(tmp_path / "caches" / "dtd")
    argv = ["--features", cache, "--config", config, "--methods", "zero-shot", "--shots", "1", "--seeds", "1",
            "--device", "cpu", "--no-progress", "--output", tmp_path / "out"]
    try:
        fewshot.main([str(a) for a in argv])
    except SystemExit as exit_:
        message = str(exit_.code)
    else:
        raise AssertionError("no error")
    assert "no_such_module_for_ssp" in message and "PYTHONPATH" in message and "Traceback" not in message

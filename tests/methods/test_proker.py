"""ProKeR against a dense float64 implementation of its formulas (synthetic and real features)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _doubles import LinearProjectorDouble, _unit, make_data

from ssp.methods.proker import ProKeR, _ridge_solver, search_solver_for
from ssp.methods.search import validation_search


def proker_reference(support, labels, text, queries, beta, lam, query_text=None, kernel_queries=None,
                     support_text=None, kernel_support=None, logit_scale=100.0):
    """Dense float64 ProKeR: G = exp(-beta (1 - X X^T)), A = (G / lam + I)^-1 (Y - X T^T) with a
    dense inverse, logits s x T^T + s exp(-beta (1 - x X^T)) A. The ``*_text`` / ``kernel_*``
    arguments give each term's features when they differ (projections)."""
    t = _unit(np.asarray(text, dtype=np.float64))
    x_s = _unit(np.asarray(support if kernel_support is None else kernel_support, dtype=np.float64))
    z_s = _unit(np.asarray(support if support_text is None else support_text, dtype=np.float64))
    gram = np.exp(-beta * (1 - x_s @ x_s.T))
    residual = np.eye(len(t))[labels] - z_s @ t.T
    a = np.linalg.inv(gram / lam + np.eye(len(x_s))) @ residual
    q_zs = _unit(np.asarray(queries if query_text is None else query_text, dtype=np.float64))
    q_k = _unit(np.asarray(queries if kernel_queries is None else kernel_queries, dtype=np.float64))
    return logit_scale * q_zs @ t.T + logit_scale * np.exp(-beta * (1 - q_k @ x_s.T)) @ a


def _rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def data():
    return make_data(n_classes=5, dim=12, shots=(4, 3, 5, 4, 3), n_query=60, seed=4)


@pytest.mark.parametrize("beta,lam", [(1.0, 0.1), (6.0, 3.0), (0.0, 0.01)])
def test_logits_equal_the_dense_formulas(data, beta, lam):
    text, support, labels, queries, _ = data
    model = ProKeR(beta=beta, lam=lam, chunk_size=7, device="cpu").fit(support, labels, text_features=text)
    expected = proker_reference(support, labels, text, queries, beta, lam)
    assert _rel_err(model.decision_function(queries), expected) < 1e-10


def test_hyper_parameters_change_without_refitting(data):
    text, support, labels, queries, _ = data
    model = ProKeR(beta=1.0, lam=0.1, device="cpu").fit(support, labels, text_features=text)
    model.decision_function(queries)
    model.set_params(beta=3.0, lam=1.0)
    expected = proker_reference(support, labels, text, queries, 3.0, 1.0)
    assert _rel_err(model.decision_function(queries), expected) < 1e-10
    for bad, match in (({"lam": 0.0}, "lam must be a finite real number > 0"), ({"beta": -1.0}, "beta must be a finite real number >= 0")):
        with pytest.raises(ValueError, match=match):
            ProKeR(**bad).fit(support, labels, text_features=text)


def test_projected_features_go_through_the_same_formulas(data):
    """"paper" routing: the kernel on vision-projected support and queries, the zero-shot
    cosines (queries and the support's residual) on the language view with projected text."""
    text, support, labels, queries, _ = data
    patches = np.repeat(support[:, None, :], 2, axis=1)
    model = ProKeR(beta=2.0, lam=0.3, projector=LinearProjectorDouble(seed=5), device="cpu").fit(
        support, labels, text_features=text, patch_features=patches)
    a_v, a_l = LinearProjectorDouble.maps(5, text.shape[1])
    expected = proker_reference(
        support, labels, model.projector_.text_features_.numpy(), queries, 2.0, 0.3,
        query_text=_unit(queries) @ a_l.T, kernel_queries=_unit(queries) @ a_v.T,
        support_text=_unit(support) @ a_l.T, kernel_support=_unit(support) @ a_v.T)
    assert _rel_err(model.decision_function(queries), expected) < 1e-10


@pytest.mark.parametrize("solver", ["eigh", "cholesky"])
def test_search_scores_every_point_like_predict(data, solver):
    text, support, labels, queries, query_labels = data
    model = ProKeR(search_solver=solver, device="cpu").fit(support, labels, text_features=text)
    grid = {"beta": [0.5, 2.0, 8.0], "lam": [0.01, 0.1, 1.0, 10.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an edge winner may warn
        result = validation_search(model, queries, query_labels, grid)
    assert result.param_names_ == ("beta", "lam") and result.scores_.shape == (3, 4)
    best = model.decision_function(queries)  # the search's cached solution
    for b, beta in enumerate(grid["beta"]):
        for i, lam in enumerate(grid["lam"]):
            model.set_params(beta=beta, lam=lam)
            assert result.scores_[b, i] == pytest.approx(model.score(queries, query_labels))
    b, i = np.unravel_index(np.argmax(result.scores_), result.scores_.shape)
    assert result.best_params_ == {"beta": grid["beta"][b], "lam": grid["lam"][i]}
    expected = proker_reference(support, labels, text, queries, grid["beta"][b], grid["lam"][i])
    assert _rel_err(best, expected) < 1e-8
    with pytest.raises(ValueError, match="lam must be a finite real number > 0"):
        validation_search(model, queries, query_labels, {"lam": [0.0, 1.0]})


def test_torch_float32_input_matches_within_float32_precision(data):
    text, support, labels, queries, _ = data
    t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in
         dict(text=text, support=support, queries=queries).items()}
    model = ProKeR(beta=2.0, lam=0.1, device="cpu").fit(t["support"], torch.as_tensor(labels),
                                                        text_features=t["text"])
    logits = model.decision_function(t["queries"])
    assert isinstance(logits, torch.Tensor) and logits.dtype == torch.float32
    assert _rel_err(logits.numpy(), proker_reference(support, labels, text, queries, 2.0, 0.1)) < 1e-4


def test_real_stanford_cars_logits_equal_the_dense_formulas(tip_cache_root):
    from ssp.features.tip_cache import load_tip_adapter_cache

    folder = tip_cache_root / "stanford_cars"
    if not (folder / "text_weights.pt").is_file():
        pytest.skip("stanford_cars cache with text_weights.pt not found")
    cache = load_tip_adapter_cache(folder, 2)
    support, labels = cache.support_features.numpy(), cache.support_labels.numpy()
    text, queries = cache.text_features.numpy(), cache.val_features[:300].numpy()
    model = ProKeR(beta=4.0, lam=0.1, device="cpu").fit(support, labels, text_features=text)
    expected = proker_reference(support.astype(np.float64), labels, text, queries, 4.0, 0.1)
    assert _rel_err(model.decision_function(queries), expected) < 1e-4


@pytest.mark.parametrize("solver", ["eigh", "cholesky"])
def test_routings_share_one_search_and_match_predict(data, solver):
    """With a projector the routing is searched too (one factorisation per beta, or per lam, for all)."""
    text, support, labels, queries, query_labels = data
    patches = np.repeat(support[:, None, :], 2, axis=1)
    model = ProKeR(device="cpu", search_solver=solver, projector=LinearProjectorDouble(seed=1)).fit(
        support, labels, text_features=text, patch_features=patches)
    grid = {"routing": ["paper", "vision", "reference"], "beta": [1.0, 4.0], "lam": [0.1, 1.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = validation_search(model, queries, query_labels, grid)
    assert result.param_names_ == ("routing", "beta", "lam") and result.scores_.shape == (3, 2, 2)
    for r, routing in enumerate(grid["routing"]):
        for b, beta in enumerate(grid["beta"]):
            for i, lam in enumerate(grid["lam"]):
                model.set_params(routing=routing, beta=beta, lam=lam)
                assert result.scores_[r, b, i] == pytest.approx(model.score(queries, query_labels))


def test_both_search_solvers_give_the_same_scores_and_winner(data):
    text, support, labels, queries, query_labels = data
    grid = {"beta": [0.5, 2.0, 8.0], "lam": [1e-3, 0.01, 0.1, 1.0, 10.0, 100.0]}
    results, logits = {}, {}
    for solver in ("eigh", "cholesky"):
        model = ProKeR(search_solver=solver, device="cpu").fit(support, labels, text_features=text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[solver] = validation_search(model, queries, query_labels, grid)
        logits[solver] = model.decision_function(queries)  # the winner's kept solution
    np.testing.assert_array_equal(results["eigh"].scores_, results["cholesky"].scores_)
    assert results["eigh"].best_params_ == results["cholesky"].best_params_
    assert _rel_err(logits["eigh"], logits["cholesky"]) < 1e-8


def test_auto_solver_picks_the_eigendecomposition_only_for_long_lam_axes():
    size = dict(n_samples=16000, n_classes=1000, n_queries=4000, dim=1024)
    assert search_solver_for("auto", n_lams=11, **size) == "cholesky"   # the default grid
    assert search_solver_for("auto", n_lams=40, **size) == "eigh"
    assert search_solver_for("eigh", n_lams=1, **size) == "eigh"
    picks = [search_solver_for("auto", n_lams=n, **size) for n in range(1, 60)]
    assert picks == sorted(picks, key=lambda s: s == "eigh")  # one switch, cholesky then eigh


def test_unknown_search_solver_is_refused(data):
    text, support, labels, _, _ = data
    with pytest.raises(ValueError, match="search_solver must be one of auto, eigh, cholesky, got 'svd'"):
        ProKeR(search_solver="svd").fit(support, labels, text_features=text)


def test_ridge_solver_falls_back_to_lu_when_not_positive_definite():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    gram = basis @ np.diag([3.0, 2.0, 1.0, 0.5, -0.4, -0.2]) @ basis.T   # indefinite
    residual = rng.standard_normal((6, 3))
    lam = 0.1
    expected = lam * np.linalg.solve(gram + lam * np.eye(6), residual)
    g = torch.from_numpy(gram)
    solved = _ridge_solver(g, lam, overwrite=False)(torch.from_numpy(residual))
    np.testing.assert_allclose(solved.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(g.numpy(), gram)  # not overwritten

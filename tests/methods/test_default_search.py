"""validation_search(grid=None): the adaptive default; the edge warning for explicit grids."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from ssp.methods import make_grid
from ssp.methods.cache_models import APE, CACHE_SEARCH_SPACE, TipAdapter
from ssp.methods.search import SearchResult, _at_floor, _coarse_axis, _edge_axes, _extend_axis, validation_search

SPACE = CACHE_SEARCH_SPACE


def _alpha_at_floor(result):
    return _at_floor(result, "alpha")


def sharp_kernel_task(n_queries=60, dim=256, n_classes=4, near=0.99, far=(0.60, 0.90), n_far=10, seed=0):
    """Each query has one support key of its class at cosine ``near`` and ``n_far`` keys of the
    next class at cosine ``far`` (spread over a range across queries); the text classifier is the
    same vector for every class (zero-shot ties). A query is right iff
    exp(β (near − far)) > n_far, i.e. β > ln(10) / (near − far): 5.9 to 25.6 for the defaults,
    so accuracy grows with β up to 25.6, far beyond the ImageNet range (β < 7)."""
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(n_queries, dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    labels = np.arange(n_queries) % n_classes

    def at_cosine(q, c):
        u = rng.normal(size=dim)
        u -= (u @ q) * q
        u /= np.linalg.norm(u)
        return c * q + np.sqrt(1 - c * c) * u

    fars = np.broadcast_to(np.asarray(far, dtype=float), (2,))
    fars = rng.permutation(np.linspace(fars[0], fars[1], n_queries))
    keys, key_labels = [], []
    for q, y, f in zip(queries, labels, fars):
        keys.append(at_cosine(q, near))
        key_labels.append(y)
        for _ in range(n_far):
            keys.append(at_cosine(q, f))
            key_labels.append((y + 1) % n_classes)
    text = np.tile(rng.normal(size=(1, dim)), (n_classes, 1))
    return np.array(keys), np.array(key_labels), text, queries, labels


def test_default_finds_a_beta_beyond_the_imagenet_range():
    keys, key_labels, text, queries, labels = sharp_kernel_task()
    search, held = slice(0, 30), slice(30, None)
    old = TipAdapter().fit(keys, key_labels, text_features=text)
    with pytest.warns(UserWarning, match=r"the chosen beta=6\.8\d* ties with the largest value of the given grid "
                                         r"\(beta=6\.966\)"):
        old_result = validation_search(old, queries[search], labels[search], make_grid("tip-adapter"))
    new = TipAdapter().fit(keys, key_labels, text_features=text)
    new_result = validation_search(new, queries[search], labels[search])
    assert new_result.best_params_["beta"] > 25.6
    assert new_result.best_score_ == 1.0 and old_result.best_score_ < 0.2
    assert new.score(queries[held], labels[held]) == 1.0 > old.score(queries[held], labels[held])
    # every stage is a real grid; the coarse one already reaches beta = 100
    first = new_result.stages_[0]["grid"]
    assert first["beta"].max() == pytest.approx(100.0) and first["alpha"][0] == 0.0
    assert new_result.stages_[-1]["best_score"] == new_result.best_score_
    assert all(s["best_score"] <= new_result.best_score_ for s in new_result.stages_)


def test_default_extends_an_upper_edge():
    # near/far so close that the thresholds ln(10) / (near - far) span 50 to 384: past the coarse
    # range (beta <= 100), whose winner is then its largest beta
    keys, key_labels, text, queries, labels = sharp_kernel_task(near=0.999, far=(0.953, 0.993), n_queries=24)
    model = TipAdapter().fit(keys, key_labels, text_features=text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # the default never warns
        result = validation_search(model, queries, labels)
    assert len(result.stages_) >= 3               # coarse, extended, refined
    assert result.stages_[1]["grid"]["beta"].max() > 100
    assert result.stages_[0]["best_params"]["beta"] == pytest.approx(100.0)
    assert result.best_params_["beta"] > 300 and result.best_score_ == 1.0
    assert model.beta == result.best_params_["beta"]


def test_default_search_on_ape():
    keys, key_labels, text, queries, labels = sharp_kernel_task(n_queries=24, dim=64)
    model = APE(n_channels=32).fit(keys, key_labels, text_features=text)
    result = validation_search(model, queries, labels)
    assert result.param_names_ == ("beta", "alpha", "gamma")
    assert result.best_params_["beta"] > 25.6 and result.best_score_ == 1.0
    assert result.stages_[0]["grid"]["gamma"].tolist() == pytest.approx(np.linspace(0, 2, 11).tolist())


def _result(scores, grid):
    scores = np.asarray(scores, dtype=float)
    best = np.unravel_index(int(np.argmax(scores)), scores.shape)
    names = tuple(grid)
    return SearchResult(best_params_={n: float(grid[n][i]) for n, i in zip(names, best)},
                        best_score_=float(scores[best]), scores_=scores,
                        grid_={k: np.asarray(v, float) for k, v in grid.items()}, param_names_=names,
                        best_index_=tuple(int(i) for i in best), n_val_=10)


def test_edge_rules():
    grid = {"beta": [1.0, 2.0, 4.0], "alpha": [0.0, 1.0, 2.0]}
    upper = [[1, 2, 1], [1, 3, 1], [1, 2, 5]]
    assert _edge_axes(_result(upper, grid), SPACE) == [("beta", "upper", 4.0), ("alpha", "upper", 2.0)]
    assert _edge_axes(_result(upper, grid), SPACE, strict=True) == [("beta", "upper", 4.0), ("alpha", "upper", 2.0)]
    assert _edge_axes(_result([[1, 2, 1], [1, 9, 1], [1, 2, 1]], grid), SPACE) == []
    # a plateau reaching the upper edge: the first maximum is inside, the optimum may be beyond
    plateau = [[1, 1, 1], [1, 7, 7], [1, 1, 1]]
    assert _edge_axes(_result(plateau, grid), SPACE) == [("alpha", "upper", 2.0)]
    assert _edge_axes(_result(plateau, grid), SPACE, strict=True) == []
    # a flat line says nothing; alpha = 0 is a true bound (zero-shot alone): no warning there
    assert _edge_axes(_result([[1, 1, 1], [9, 1, 1], [1, 1, 1]], grid), SPACE) == []
    # a smallest positive alpha warns
    low_alpha = {"beta": [1.0, 2.0, 4.0], "alpha": [0.5, 1.0, 2.0]}
    assert _edge_axes(_result([[1, 1, 1], [9, 1, 1], [1, 1, 1]], low_alpha), SPACE) == [("alpha", "lower", 0.5)]
    # beta: a lower edge at 0.1 (linear-kernel regime) is not an edge; at 2.0 it is
    assert _edge_axes(_result([[9, 1, 1], [1, 1, 1], [1, 1, 1]], {"beta": [0.1, 1, 2], "alpha": [0, 1, 2]}), SPACE) == []
    assert _edge_axes(_result([[1, 9, 1], [1, 1, 1], [1, 1, 1]], {"beta": [2, 3, 4], "alpha": [0, 1, 2]}), SPACE) == \
        [("beta", "lower", 2.0)]
    # two-value axes are deliberate comparisons: no warning
    assert _edge_axes(_result([[1, 2], [3, 4]], {"beta": [1.0, 2.0], "alpha": [1.0, 2.0]}), SPACE) == []


def test_explicit_grid_warns_and_is_searched_as_given():
    keys, key_labels, text, queries, labels = sharp_kernel_task(n_queries=24)
    model = TipAdapter().fit(keys, key_labels, text_features=text)
    grid = {"beta": [1.0, 5.0, 10.0, 20.0], "alpha": [1.0, 10.0, 100.0]}
    with pytest.warns(UserWarning, match=r"along beta is reached at the largest value of the given grid "
                                         r"\(beta=20, chosen\).*extend grid\['beta'\] above 20"):
        result = validation_search(model, queries, labels, grid)
    assert result.stages_ == [] and result.scores_.shape == (4, 3)
    np.testing.assert_array_equal(result.grid_["beta"], grid["beta"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # at beta = 1e6 every activation underflows to 0: the peak is inside, no warning
        result = validation_search(model, queries, labels, {"beta": [10.0, 40.0, 1e6], "alpha": [10.0]})
    assert result.best_params_["beta"] == 40.0


def test_alpha_extends_downwards():
    alpha = _coarse_axis(SPACE["alpha"])                   # 0, 0.01 ... 100
    grid = {"beta": [1.0, 2.0, 4.0], "alpha": alpha}
    scores = np.zeros((3, alpha.size))
    scores[1, 1] = 9.0                              # the smallest positive alpha wins outright
    assert _alpha_at_floor(_result(scores, grid))
    scores[1, 2] = 9.0                              # a tie with the next alpha: no extension
    assert not _alpha_at_floor(_result(scores, grid))
    lower = _extend_axis(SPACE["alpha"], alpha, upper=False)
    assert lower[0] == 0.0 and lower[1] == pytest.approx(1e-3) and np.all(np.diff(lower) > 0)
    assert lower.size == alpha.size + 10
    assert _extend_axis(SPACE["alpha"], np.array([0.0, 1e-4, 1.26e-4]), upper=False) is None   # the floor
    assert _extend_axis(SPACE["beta"], _coarse_axis(SPACE["beta"]), upper=False) is None
    upper = _extend_axis(SPACE["beta"], _coarse_axis(SPACE["beta"]))
    assert upper.max() == pytest.approx(1000.0) and np.all(np.diff(upper) > 0)


def test_lower_edge_warning_names_the_fix():
    keys, key_labels, text, queries, labels = sharp_kernel_task(n_queries=24)
    model = TipAdapter().fit(keys, key_labels, text_features=text)
    # beta = 30 gets every query right; at 1e6 and 2e6 every activation underflows to 0 (ties):
    # the best accuracy is at the grid's smallest beta, and 30 > 0.2 is no linear-kernel regime
    with pytest.warns(UserWarning, match=r"along beta is reached at the smallest value of the given grid "
                                         r"\(beta=30, chosen\).*extend grid\['beta'\] below 30 \(make_grid starts"):
        validation_search(model, queries, labels, {"beta": [30.0, 1e6, 2e6], "alpha": [1.0]})

"""validation_search: the vectorised grid must equal a brute-force loop of set_params + score."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _doubles import LinearProjectorDouble
from _doubles import make_data as _make_data
from sklearn.exceptions import NotFittedError

from ssp._checks import ROUTINGS
from ssp.methods.cache_models import APE, TipAdapter
from ssp.methods.registry import default_config, get_method
from ssp.methods import make_grid, validation_search
from ssp.methods.zero_shot import ZeroShotCLIP


def make_data(n_classes=6, dim=10, shots=(3, 1, 4, 2, 3, 2), n_val=150, seed=0,
              dtype=np.float64, noise=1.3):
    return _make_data(n_classes, dim, shots, n_val, seed, dtype, noise=noise, offset=0.8)


def brute_force(model, grid, names, val, val_labels):
    """Accuracy (%) at every grid point by setting the parameters and calling score."""
    shape = tuple(len(grid[n]) for n in names)
    scores = np.zeros(shape)
    for idx in np.ndindex(*shape):
        params = {n: (grid[n][i] if n == "routing" else float(grid[n][i]))
                  for n, i in zip(names, idx)}
        model.set_params(**params)
        scores[idx] = model.score(val, val_labels)
    return scores


# ----------------------------------------------------------------------------- grids


def test_make_grid_reproduces_the_reference_lists():
    grid = make_grid("ape", (10, 7, 1), (200, 20, 20))
    assert list(grid) == ["beta", "alpha", "gamma"]
    beta_ref = [i * (10 - 0.1) / 200 + 0.1 for i in range(200)]
    alpha_ref = [i * (7 - 0.1) / 20 + 0.1 for i in range(20)]
    gamma_ref = [i * 1 / 20 for i in range(20)]
    assert grid["beta"].tolist() == beta_ref
    assert grid["alpha"].tolist() == alpha_ref
    assert grid["gamma"].tolist() == gamma_ref
    assert grid["beta"].max() < 10 and grid["gamma"][0] == 0.0
    tip = make_grid("tip_adapter", (20, 10), (200, 20))
    assert list(tip) == ["beta", "alpha"] and tip["alpha"][0] == pytest.approx(0.1)
    default = make_grid("tip")
    assert len(default["beta"]) == default_config()["tip_adapter"]["search_step"][0]
    assert make_grid("Tip-Adapter")["beta"].tolist() == default["beta"].tolist()  # one table, many spellings


def test_make_grid_errors():
    with pytest.raises(ValueError, match="unknown method"):
        make_grid("coop")
    with pytest.raises(ValueError, match="no hyper-parameters"):
        make_grid("zero-shot")
    with pytest.raises(ValueError, match="needs 3 values"):
        make_grid("ape", (7, 7), (200, 20))
    with pytest.raises(ValueError, match="positive int"):
        make_grid("tip-adapter", (7, 3), (200, 0))
    with pytest.raises(ValueError, match="positive number"):
        make_grid("tip-adapter", (-1, 3), (10, 10))


# ----------------------------------------------------------------------------- equality with brute force


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tip_grid_equals_brute_force(dtype):
    text, support, labels, val, val_labels = make_data(dtype=dtype)
    model = TipAdapter(logit_scale=20.0).fit(support, labels, text_features=text)
    grid = make_grid("tip-adapter", (9, 4), (17, 11))
    result = validation_search(model, val, val_labels, grid)
    # the best parameters are set on the model, which keeps its fitted state
    assert model.get_params()["beta"] == result.best_params_["beta"]
    assert model.get_params()["alpha"] == result.best_params_["alpha"]
    assert model.score(val, val_labels) == pytest.approx(result.best_score_)
    assert result.best_accuracy_pct_ == pytest.approx(100 * result.best_score_)
    expected = brute_force(model, result.grid_, result.param_names_, val, val_labels)
    assert result.param_names_ == ("beta", "alpha")
    np.testing.assert_allclose(result.scores_, expected, rtol=0, atol=1e-9)
    assert expected.max() > expected.min()  # the grid is not flat: the test can fail
    assert result.best_index_ == np.unravel_index(np.argmax(expected), expected.shape)
    assert result.best_score_ == pytest.approx(expected.max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ape_grid_equals_brute_force(dtype):
    text, support, labels, val, val_labels = make_data(seed=1, dtype=dtype)
    model = APE(logit_scale=20.0, n_channels=7, criterion_weights=(0.6, 0.4)).fit(
        support, labels, text_features=text)
    grid = make_grid("ape", (9, 4, 3), (9, 7, 5))
    result = validation_search(model, val, val_labels, grid)
    expected = brute_force(model, result.grid_, result.param_names_, val, val_labels)
    np.testing.assert_allclose(result.scores_, expected, rtol=0, atol=1e-9)
    assert len(np.unique(expected)) > 3
    assert result.best_index_ == np.unravel_index(np.argmax(expected), expected.shape)
    assert set(result.best_params_) == {"beta", "alpha", "gamma"}


def test_alpha_zero_and_single_value_axes():
    text, support, labels, val, val_labels = make_data(seed=2)
    model = APE(logit_scale=20.0, gamma=0.3).fit(support, labels, text_features=text)
    grid = {"alpha": [0.0, 0.5, 2.0, 8.0], "beta": [3.0]}
    result = validation_search(model, val, val_labels, grid)
    assert result.param_names_ == ("beta", "alpha") and result.scores_.shape == (1, 4)
    assert result.fixed_params_["gamma"] == 0.3
    expected = brute_force(model, result.grid_, result.param_names_, val, val_labels)
    np.testing.assert_allclose(result.scores_, expected, atol=1e-9)
    zero_shot = ZeroShotCLIP(logit_scale=20.0).fit(text_features=text).score(val, val_labels)
    assert result.scores_[0, 0] == pytest.approx(zero_shot)


def test_ties_go_to_the_first_grid_point():
    text, support, labels, val, val_labels = make_data(seed=3, noise=0.05)
    model = TipAdapter().fit(support, labels, text_features=text)
    result = validation_search(model, val, val_labels, {"beta": [1.0, 2.0], "alpha": [0.1, 0.2]})
    assert (result.scores_ == 1.0).all()  # every point perfect -> the first one wins
    assert result.best_index_ == (0, 0) and result.best_params_ == {"beta": 1.0, "alpha": 0.1}


def test_routing_axis_with_a_projector():
    text, support, labels, val, val_labels = make_data(seed=4)
    patches = np.zeros((len(labels), 2, text.shape[1]))
    model = APE(logit_scale=20.0, projector=LinearProjectorDouble(seed=2, scale=0.6)).fit(
        support, labels, text_features=text, patch_features=patches)
    grid = {"routing": list(ROUTINGS), "beta": [1.0, 4.0], "alpha": [0.5, 2.0],
            "gamma": [0.0, 0.5]}
    result = validation_search(model, val, val_labels, grid)
    assert result.param_names_ == ("routing", "beta", "alpha", "gamma")
    expected = brute_force(model, result.grid_, result.param_names_, val, val_labels)
    np.testing.assert_allclose(result.scores_, expected, atol=1e-9)
    assert not np.allclose(expected[0], expected[1])  # routings really differ here
    best = np.unravel_index(np.argmax(expected), expected.shape)
    assert result.best_params_["routing"] == ROUTINGS[best[0]] == model.routing


def test_zero_shot_search():
    text, support, labels, val, val_labels = make_data(seed=5)
    plain = ZeroShotCLIP().fit(text_features=text)
    result = validation_search(plain, val, val_labels)
    assert result.scores_.shape == () and result.best_params_ == {}
    assert result.best_score_ == pytest.approx(plain.score(val, val_labels))
    patches = np.zeros((len(labels), 2, text.shape[1]))
    projected = ZeroShotCLIP(projector=LinearProjectorDouble(scale=0.6)).fit(
        support, labels, text_features=text, patch_features=patches)
    result = validation_search(projected, val, val_labels, {"routing": ["paper", "vision"]})
    expected = brute_force(projected, result.grid_, ("routing",), val, val_labels)
    np.testing.assert_allclose(result.scores_, expected, atol=1e-9)
    with pytest.raises(ValueError, match="cannot search"):
        validation_search(plain, val, val_labels, {"alpha": [1.0]})


def test_default_grid_and_torch_inputs():
    text, support, labels, val, val_labels = make_data(seed=6)
    model = TipAdapter().fit(torch.as_tensor(support), torch.as_tensor(labels),
                             text_features=torch.as_tensor(text))
    result = validation_search(model, torch.as_tensor(val), torch.as_tensor(val_labels))
    # grid=None: the adaptive default search; its last stage is what scores_ / grid_ describe
    assert result.scores_.shape == (len(result.grid_["beta"]), len(result.grid_["alpha"]))
    assert len(result.stages_) >= 2 and result.stages_[-1]["best_score"] == result.best_score_
    expected = brute_force(model, result.grid_, ("beta", "alpha"), val, val_labels)
    np.testing.assert_allclose(result.scores_, expected, atol=1e-9)


def test_search_errors():
    text, support, labels, val, val_labels = make_data()
    with pytest.raises(NotFittedError):
        validation_search(TipAdapter(), val, val_labels)
    model = TipAdapter().fit(support, labels, text_features=text)
    with pytest.raises(ValueError, match="cannot search"):
        validation_search(model, val, val_labels, {"gamma": [0.1]})
    with pytest.raises(ValueError, match="no projector"):
        validation_search(model, val, val_labels, {"routing": ["paper"]})
    with pytest.raises(ValueError, match="empty"):
        validation_search(model, val, val_labels, {"beta": []})
    with pytest.raises(ValueError, match="must be >= 0"):
        validation_search(model, val, val_labels, {"alpha": [-1.0, 1.0]})
    with pytest.raises(ValueError, match="NaN"):
        validation_search(model, val, val_labels, {"beta": [np.nan]})
    with pytest.raises(ValueError, match="X has 9 features, but TipAdapter is expecting 10"):
        validation_search(model, val[:, :9], val_labels, {"beta": [1.0]})
    with pytest.raises(ValueError, match="contains class 6"):
        validation_search(model, val, np.full_like(val_labels, 6), {"beta": [1.0]})
    with pytest.raises(ValueError, match="val_labels has 3 entries"):
        validation_search(model, val, val_labels[:3], {"beta": [1.0]})


def test_routing_search_with_the_real_ssp_projector():
    import ssp.methods.ssp.projector as projector_module
    text, support, labels, val, val_labels = make_data(seed=7, dim=12)
    rng = np.random.default_rng(0)
    patches = support[:, None, :] + 0.5 * rng.normal(size=(len(labels), 5, text.shape[1]))
    proj = projector_module.SSPProjector(patch_top_k=3, class_top_k=2, rank=4, device="cpu")
    model = TipAdapter(logit_scale=20.0, projector=proj, device="cpu").fit(
        support, labels, text_features=text, patch_features=patches)
    grid = {"routing": list(ROUTINGS), "beta": [1.0, 5.0], "alpha": [0.3, 3.0]}
    result = validation_search(model, val, val_labels, grid)
    assert model.routing == result.best_params_["routing"]
    expected = brute_force(model, result.grid_, result.param_names_, val, val_labels)
    np.testing.assert_allclose(result.scores_, expected, atol=1e-9)

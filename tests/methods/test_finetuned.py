"""TipAdapterF / APET: equal to the training-free models at initialisation, trained honestly."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _doubles import LinearProjectorDouble, _unit
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from ssp._checks import ROUTINGS
from ssp.methods.cache_models import APE, TipAdapter
from ssp.methods.finetuned import APET, TipAdapterF
from ssp.methods.registry import get_method
from ssp.methods import make_grid, validation_search


def make_data(n_classes=5, dim=12, shots=(3, 1, 4, 2, 3), n_views=3, n_val=60, seed=0,
              noise=1.2, dtype=np.float64):
    """Text [C, D], support keys [N, D] (shuffled, unequal shots), views [E, N, D], val, test."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(n_classes, dim))
    offsets = 0.8 * rng.normal(size=(n_classes, dim))
    labels = np.concatenate([np.full(k, c) for c, k in enumerate(shots)])
    support = text[labels] + offsets[labels] + 0.9 * rng.normal(size=(len(labels), dim))
    order = rng.permutation(len(labels))
    support, labels = support[order], labels[order]
    views = support[None] + 0.3 * rng.normal(size=(n_views,) + support.shape)
    keys = _unit(_unit(views).mean(0))

    def queries(n):
        y = rng.integers(0, n_classes, size=n)
        return (text[y] + offsets[y] + noise * rng.normal(size=(n, dim))).astype(dtype), y

    val, val_y = queries(n_val)
    test, test_y = queries(n_val)
    return (text.astype(dtype), keys.astype(dtype), labels, views.astype(dtype), val, val_y,
            test, test_y)


FAST = dict(epochs=6, lr=0.05, eps=1e-4, batch_size=4, seed=3, logit_scale=20.0)


# ----------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("projector", [False, True])
def test_tip_adapter_f_without_training_is_tip_adapter(projector):
    text, keys, labels, views, val, val_y, test, _ = make_data()
    kw = dict(alpha=2.0, beta=3.0, logit_scale=20.0)
    proj = LinearProjectorDouble(seed=1) if projector else None
    patches = keys[:, None, :].repeat(2, axis=1) if projector else None
    for routing in (ROUTINGS if projector else ("paper",)):
        tip = TipAdapter(projector=proj, routing=routing, **kw).fit(
            keys, labels, text_features=text, patch_features=patches)
        expected = tip.decision_function(test)
        zero = TipAdapterF(epochs=0, projector=proj, routing=routing, **kw).fit(
            keys, labels, text_features=text, view_features=views, patch_features=patches)
        np.testing.assert_array_equal(zero.decision_function(test), expected)
        assert zero.best_epoch_ == 0 and zero.history_ == []
        # lr = 0: every step leaves the keys unchanged (AdamW's decay is lr * weight_decay)
        frozen = TipAdapterF(epochs=3, lr=0.0, batch_size=4, projector=proj, routing=routing,
                             **kw).fit(keys, labels, text_features=text, view_features=views,
                                       val_features=val, val_labels=val_y,
                                       patch_features=patches)
        np.testing.assert_allclose(frozen.decision_function(test), expected, rtol=0, atol=1e-12)
        assert len(frozen.history_) == 3


@pytest.mark.parametrize("n_channels,gamma", [(None, 0.5), (7, 1.3)])
def test_ape_t_without_training_is_ape(n_channels, gamma):
    text, keys, labels, views, val, val_y, test, _ = make_data(seed=1)
    kw = dict(alpha=1.7, beta=3.0, gamma=gamma, n_channels=n_channels,
              criterion_weights=(0.2, 0.8), logit_scale=20.0)
    ape = APE(**kw).fit(keys, labels, text_features=text)
    zero = APET(epochs=0, **kw).fit(keys, labels, text_features=text, view_features=views)
    np.testing.assert_array_equal(np.asarray(zero.channels_), np.asarray(ape.channels_))
    np.testing.assert_allclose(zero.decision_function(test), ape.decision_function(test),
                               rtol=0, atol=1e-12)
    frozen = APET(epochs=2, lr=0.0, batch_size=5, **kw).fit(
        keys, labels, text_features=text, val_features=val, val_labels=val_y)
    np.testing.assert_allclose(frozen.decision_function(test), ape.decision_function(test),
                               rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(frozen.value_weights_), np.ones(len(labels)))


def test_ape_t_channels_follow_n_channels():
    text, keys, labels, *_ = make_data(seed=2)
    model = APET(n_channels=5, epochs=1, batch_size=8).fit(keys, labels, text_features=text)
    assert model.channels_.shape == (5,)
    assert model.category_residual_.shape == (text.shape[0], 5)
    assert model.selected_keys_.shape == (len(labels), 5)


# ----------------------------------------------------------------------------- trained logits


def dense_ape_t(model, text, queries):
    """Float64 reference of APE-T's logits from the fitted parameters (no projector)."""
    w, x = _unit(text), _unit(queries)
    chans = np.asarray(model.channels_)
    res = np.asarray(model.category_residual_)
    y = np.asarray(model.support_labels_)
    w_trained = w.copy()
    w_trained[:, chans] += res
    keys = _unit(np.asarray(model.support_features_)[:, chans]) + res[y]
    values = np.eye(w.shape[0])[y] * (np.asarray(model.value_weights_)
                                      * np.exp(model.gamma * np.asarray(model.key_divergence_)))[:, None]
    affinity = _unit(x[:, chans]) @ keys.T
    return (model.logit_scale * x @ w_trained.T
            + model.alpha * np.exp(-model.beta * (1 - affinity)) @ values)


def test_trained_models_match_dense_formulas():
    text, keys, labels, views, val, val_y, test, _ = make_data(seed=3)
    tip = TipAdapterF(alpha=1.5, beta=2.0, **FAST).fit(
        keys, labels, text_features=text, view_features=views, val_features=val, val_labels=val_y)
    theta = np.asarray(tip.keys_)
    onehot = np.eye(text.shape[0])[np.asarray(tip.support_labels_)]
    expected = (20.0 * _unit(test) @ _unit(text).T
                + 1.5 * np.exp(-2.0 * (1 - _unit(test) @ theta.T)) @ onehot)
    np.testing.assert_allclose(tip.decision_function(test), expected, rtol=1e-10, atol=1e-10)
    assert not np.allclose(theta, np.asarray(tip.initial_keys_))       # the keys moved
    ape = APET(alpha=1.5, beta=2.0, gamma=0.4, n_channels=8, **FAST).fit(
        keys, labels, text_features=text, view_features=views, val_features=val, val_labels=val_y)
    np.testing.assert_allclose(ape.decision_function(test), dense_ape_t(ape, text, test),
                               rtol=1e-10, atol=1e-10)
    assert np.abs(np.asarray(ape.category_residual_)).max() > 0


@pytest.mark.parametrize("cls", [TipAdapterF, APET])
def test_loss_decreases_on_a_separable_set(cls):
    rng = np.random.default_rng(0)
    n_classes, dim, shots = 4, 16, 6
    centers = 3.0 * np.eye(dim)[:n_classes]
    text = centers + 0.8 * rng.normal(size=centers.shape)       # a poor zero-shot classifier
    labels = np.repeat(np.arange(n_classes), shots)
    keys = centers[labels] + 0.3 * rng.normal(size=(len(labels), dim))
    model = cls(alpha=1.0, beta=1.0, epochs=15, lr=0.05, batch_size=8, seed=0,
                logit_scale=10.0).fit(keys, labels, text_features=text)
    losses = [h["train_loss"] for h in model.history_]
    assert losses[-1] < 0.5 * losses[0]
    assert model.training_inputs_ == "keys" and model.n_views_ == 0
    assert model.selection_ == "last" and model.best_epoch_ == 15
    untrained = clone(model).set_params(epochs=0).fit(keys, labels, text_features=text)

    def loss(m):
        logits = torch.as_tensor(m.decision_function(keys))
        return float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels)))

    assert loss(model) < 0.5 * loss(untrained)
    assert model.score(keys, labels) == 1.0


# ----------------------------------------------------------------------------- selection, determinism


@pytest.mark.parametrize("cls", [TipAdapterF, APET])
def test_epoch_selection_reads_validation_only(cls):
    text, keys, labels, views, val, val_y, test, test_y = make_data(seed=7, noise=1.5)
    kw = dict(alpha=2.0, beta=2.0, epochs=12, lr=0.1, batch_size=4, seed=0, logit_scale=10.0)
    model = cls(**kw).fit(keys, labels, text_features=text, view_features=views,
                          val_features=val, val_labels=val_y)
    curve = [h["val_score"] for h in model.history_]
    assert model.best_epoch_ == int(np.argmax(curve)) + 1          # first best validation epoch
    assert model.score(val, val_y) == pytest.approx(max(curve))
    # the test set would pick another epoch, if it were (wrongly) used as the validation set
    peeking = cls(**kw).fit(keys, labels, text_features=text, view_features=views,
                            val_features=test, val_labels=test_y)
    assert peeking.best_epoch_ != model.best_epoch_
    assert 100 * peeking.score(test, test_y) > 100 * model.score(test, test_y)
    # identical training runs, selection differs only through the validation pair
    assert [h["train_loss"] for h in peeking.history_] == [h["train_loss"] for h in model.history_]


@pytest.mark.parametrize("cls", [TipAdapterF, APET])
def test_same_seed_gives_bit_identical_logits(cls):
    text, keys, labels, views, val, val_y, test, _ = make_data(seed=5, dtype=np.float32)
    fit = dict(text_features=text, view_features=views, val_features=val, val_labels=val_y)
    state = torch.random.get_rng_state()
    a = cls(**FAST).fit(keys, labels, **fit).decision_function(test)
    assert torch.equal(state, torch.random.get_rng_state())       # the global RNG is untouched
    torch.manual_seed(123)                                         # and never read
    b = cls(**FAST).fit(keys, labels, **fit).decision_function(test)
    np.testing.assert_array_equal(a, b)
    c = cls(**{**FAST, "seed": 4}).fit(keys, labels, **fit).decision_function(test)
    assert not np.array_equal(a, c)
    model = cls(**FAST).fit(keys, labels, **fit)
    assert model.training_inputs_ == "views" and model.n_views_ == views.shape[0]
    assert model.train_time_s_ > 0 and model.n_steps_ == FAST["epochs"] * 4   # ceil(13 / 4)


def test_torch_in_torch_out_and_float32():
    text, keys, labels, views, val, val_y, test, _ = make_data(seed=6, dtype=np.float32)
    model = APET(**FAST).fit(torch.as_tensor(keys), torch.as_tensor(labels),
                             text_features=torch.as_tensor(text),
                             view_features=torch.as_tensor(views))
    out = model.decision_function(torch.as_tensor(test))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), model.decision_function(test), rtol=0, atol=0)


# ----------------------------------------------------------------------------- sklearn API, errors


@pytest.mark.parametrize("cls", [TipAdapterF, APET])
def test_sklearn_params_and_clone(cls):
    text, keys, labels, *_ = make_data()
    model = cls(**FAST)
    params = model.get_params()
    for name in ("alpha", "beta", "epochs", "lr", "eps", "weight_decay", "batch_size", "seed",
                 "device", "projector", "routing", "logit_scale"):
        assert name in params
    if cls is APET:
        assert {"gamma", "n_channels", "criterion_weights"} <= set(params)
    with pytest.raises(TypeError):
        cls(1.0)                                                    # keyword-only
    model.fit(keys, labels, text_features=text)
    copy = clone(model)
    assert copy.get_params() == params
    with pytest.raises(NotFittedError):
        copy.predict(keys)
    model.set_params(alpha=0.5)                                     # read at prediction time
    model.predict(keys)
    model.set_params(epochs=9)                                      # a fit-time parameter
    with pytest.raises(ValueError, match="epochs changed after fit"):
        model.predict(keys)


def test_bad_inputs_leave_the_model_unfitted():
    text, keys, labels, views, val, val_y, *_ = make_data()
    model = TipAdapterF(**FAST)
    with pytest.raises(ValueError, match=r"view_features must be \[E, N, D\]"):
        model.fit(keys, labels, text_features=text, view_features=views[:, :-1])
    assert not hasattr(model, "keys_")
    with pytest.raises(ValueError, match="both val_features and val_labels"):
        model.fit(keys, labels, text_features=text, val_features=val)
    with pytest.raises(ValueError, match="epochs must be an integer >= 0"):
        TipAdapterF(epochs=-1).fit(keys, labels, text_features=text)
    with pytest.raises(ValueError, match="eps must be a finite real number > 0"):
        APET(eps=0.0).fit(keys, labels, text_features=text)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        APET(batch_size=2.5).fit(keys, labels, text_features=text)


def test_the_registry_reads_the_fine_tuned_constructor_values_from_the_config():
    section = {"epochs": 20, "lr": 0.001, "eps": 0.005, "weight_decay": 0.1, "batch_size": 256,
               "n_channels": 800, "criterion_weights": [0.2, 0.8], "unrelated": 1}
    cfg = {"ape": {"init": {"alpha": 1.0, "beta": 1.0, "gamma": 0.1}}, "ape_t": section}
    params = get_method("ape-t").constructor_params(cfg, 512)
    assert params["criterion_weights"] == (0.2, 0.8) and "unrelated" not in params
    assert params["eps"] == 0.005 and params["gamma"] == 0.1
    APET(**params)


# ----------------------------------------------------------------------------- search after training


def brute_force(model, grid, names, val, val_y):
    shape = tuple(len(grid[n]) for n in names)
    scores = np.zeros(shape)
    for idx in np.ndindex(*shape):
        model.set_params(**{n: float(grid[n][i]) for n, i in zip(names, idx)})
        scores[idx] = model.score(val, val_y)
    return scores


def test_search_on_fitted_tip_adapter_f_equals_brute_force():
    text, keys, labels, views, val, val_y, *_ = make_data(seed=7, n_val=120)
    model = TipAdapterF(**FAST).fit(keys, labels, text_features=text, view_features=views,
                                    val_features=val, val_labels=val_y)
    result = validation_search(model, val, val_y, make_grid("tip-adapter", (9, 4), (13, 9)))
    expected = brute_force(model, result.grid_, result.param_names_, val, val_y)
    np.testing.assert_allclose(result.scores_, expected, rtol=0, atol=1e-9)
    assert expected.max() > expected.min()


@pytest.mark.parametrize("negative", [False, True])
def test_search_on_fitted_ape_t_equals_brute_force(negative):
    text, keys, labels, views, val, val_y, *_ = make_data(seed=8, n_val=120)
    model = APET(n_channels=9, **FAST).fit(keys, labels, text_features=text,
                                          view_features=views, val_features=val, val_labels=val_y)
    if negative:
        # trained value weights can cross zero; flip some to exercise that case exactly
        # (the computations read the private torch copy of the fitted tensors)
        signs = torch.ones_like(model._torch.value_weights_)
        signs[::3] = -1.0
        model._torch.value_weights_ = model._torch.value_weights_ * signs * 3.0
        assert (model._torch.value_weights_ < 0).any()
    result = validation_search(model, val, val_y, make_grid("ape", (9, 4, 2), (7, 6, 5)))
    expected = brute_force(model, result.grid_, result.param_names_, val, val_y)
    np.testing.assert_allclose(result.scores_, expected, rtol=0, atol=1e-9)
    assert len(np.unique(expected)) > 3
    assert result.best_index_ == np.unravel_index(np.argmax(expected), expected.shape)


def test_search_with_projector_and_routing_axis():
    text, keys, labels, views, val, val_y, *_ = make_data(seed=9, n_val=100)
    patches = keys[:, None, :].repeat(2, axis=1)
    model = APET(n_channels=9, projector=LinearProjectorDouble(seed=2), **FAST).fit(
        keys, labels, text_features=text, view_features=views, patch_features=patches,
        val_features=val, val_labels=val_y)
    grid = {"routing": list(ROUTINGS), **make_grid("ape", (6, 3, 1), (4, 3, 2))}
    result = validation_search(model, val, val_y, grid)
    expected = np.zeros(result.scores_.shape)
    for r, routing in enumerate(ROUTINGS):
        model.set_params(routing=routing)
        expected[r] = brute_force(model, result.grid_, ("beta", "alpha", "gamma"), val, val_y)
    np.testing.assert_allclose(result.scores_, expected, rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- real features


@pytest.mark.slow
def test_stanford_cars_fine_tuning_beats_training_free(tip_cache_root):
    """16 shots, keys as training inputs; validation features split in two seeded halves:
    epoch selection and search on one, accuracy on the other (the published grids)."""
    from ssp.features.tip_cache import load_tip_adapter_cache
    from ssp.run.config import load_config

    folder = tip_cache_root / "stanford_cars"
    if not (folder / "keys_16shots.pt").is_file():
        pytest.skip(f"{folder} has no 16-shot cache")
    cache = load_tip_adapter_cache(folder, 16)
    n = cache.val_labels.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    sel, held = perm[: n // 2], perm[n // 2:]
    xs, ys = cache.val_features[sel], cache.val_labels[sel]
    xh, yh = cache.val_features[held], cache.val_labels[held]
    support, labels, text = cache.support_features, cache.support_labels, cache.text_features
    cfg = load_config("stanford_cars")
    tip_grid, ape_grid = get_method("tip-adapter").grid(cfg), get_method("ape").grid(cfg)
    device = "cpu"

    tip = TipAdapter(device=device).fit(support, labels, text_features=text)
    validation_search(tip, xs, ys, tip_grid)
    tip_f = get_method("tip-adapter-f").build(cfg, n_features=text.shape[1], device=device)
    tip_f.fit(support, labels, text_features=text, val_features=xs, val_labels=ys)
    assert tip_f.training_inputs_ == "keys" and tip_f.selection_ == "validation"
    validation_search(tip_f, xs, ys, tip_grid)
    tip_acc, tip_f_acc = 100 * tip.score(xh, yh), 100 * tip_f.score(xh, yh)

    ape_cfg = cfg["ape"]
    ape = APE(n_channels=ape_cfg["n_channels"], criterion_weights=tuple(ape_cfg["criterion_weights"]),
              device=device).fit(support, labels, text_features=text)
    validation_search(ape, xs, ys, ape_grid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped channel counts are fractions of D: nothing is clamped
        ape_t = get_method("ape-t").build(cfg, n_features=text.shape[1], device=device)
        ape_t.fit(support, labels, text_features=text, val_features=xs, val_labels=ys)
    assert len(ape_t.channels_) == round(cfg["ape_t"]["n_channels"] * text.shape[1])
    validation_search(ape_t, xs, ys, ape_grid)
    ape_acc, ape_t_acc = 100 * ape.score(xh, yh), 100 * ape_t.score(xh, yh)
    print(f"Tip-Adapter {tip_acc:.2f} -> Tip-Adapter-F {tip_f_acc:.2f}; "
          f"APE {ape_acc:.2f} -> APE-T {ape_t_acc:.2f}")
    assert tip_f_acc >= tip_acc + 4.0
    assert ape_t_acc >= ape_acc + 3.0


def test_progress_bar_counts_steps(capsys):
    text, keys, labels, views, val, val_y, *_ = make_data()
    TipAdapterF(progress=True, **FAST).fit(keys, labels, text_features=text, view_features=views,
                                           val_features=val, val_labels=val_y)
    err = capsys.readouterr().err
    assert "training TipAdapterF" in err and f"{FAST['epochs'] * 4}/{FAST['epochs'] * 4}" in err

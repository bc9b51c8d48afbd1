"""TIMO / TIMO-S against a dense float64 implementation of their formulas (IGT, TGI, GDA), and
TIMO-S's search against a plain loop over the released code's selection rule."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _doubles import LinearProjectorDouble, _unit, make_data

from ssp.methods.registry import get_method
from ssp.methods.search import validation_search
from ssp.methods.timo import TIMO, TIMOS, text_sample_count


def timo_reference(support, labels, views, prompts, queries, *, alpha, gamma, n_text, logit_scale=100.0,
                   vision=None, language=None):
    """Dense float64 TIMO written from the formulas (module docstring of ssp.methods.timo).

    ``vision`` / ``language``: [D, D] maps of a linear projector double (then L2 normalisation)."""
    n_classes, n_prompts, dim = prompts.shape
    t = _unit(np.asarray(prompts, dtype=np.float64))
    keys = _unit(np.asarray(support, dtype=np.float64))
    proto = _unit(np.stack([keys[labels == c].mean(0) for c in range(n_classes)]))
    m = np.einsum("cd,cpd->cp", proto, t)                                     # matching scores
    z = gamma * m / np.linalg.norm(m, axis=1, keepdims=True)
    w = np.exp(z - z.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)                                              # IGT weights
    t_zs = t if language is None else _unit(t @ language.T)
    head = _unit(np.einsum("cp,cpd->cd", w, t_zs))                            # IGT head
    # TGI: prompts in decreasing matching score, cycled to n_text, each scaled by its score
    samples, sample_labels = [], []
    t_s = t if vision is None else _unit(t @ vision.T)
    for c in range(n_classes):
        order = np.argsort(-m[c], kind="stable")
        for j in range(n_text):
            p = order[j % n_prompts]
            samples.append(m[c, p] * t_s[c, p])
            sample_labels.append(c)
    images = _unit(np.asarray(views, dtype=np.float64)).reshape(-1, dim)
    if vision is not None:
        images = _unit(images @ vision.T)
    x = np.concatenate([np.array(samples), images])
    y = np.concatenate([sample_labels, np.tile(labels, len(views))])
    means = np.stack([x[y == c].mean(0) for c in range(n_classes)])
    cov = np.cov((x - means[y]).T)
    precision = dim * np.linalg.pinv((len(x) - 1) * cov + np.trace(cov) * np.eye(dim))
    weights = precision @ means.T
    bias = np.log(1.0 / n_classes) - 0.5 * np.einsum("cd,de,ce->c", means, precision, means)
    q = _unit(np.asarray(queries, dtype=np.float64))
    q_zs = q if language is None else _unit(q @ language.T)
    q_gda = q if vision is None else _unit(q @ vision.T)
    return logit_scale * q_zs @ head.T + alpha * (q_gda @ weights + bias), w


def _rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def data():
    text, support, labels, queries, query_labels = make_data(n_classes=5, dim=12, shots=(4, 3, 5, 4, 3),
                                                             n_query=80, seed=5)
    rng = np.random.default_rng(1)
    views = support[None] + 0.3 * rng.normal(size=(3,) + support.shape)
    prompts = text[:, None, :] + 0.8 * rng.normal(size=(5, 4, 12))           # several prompts per class
    return text, support, labels, queries, query_labels, views, prompts


@pytest.mark.parametrize("alpha, gamma, text_fraction", [(0.5, 50.0, None), (3.0, 7.0, 0.6), (0.01, 1.0, 0.0)])
def test_logits_equal_the_dense_formulas(data, alpha, gamma, text_fraction):
    text, support, labels, queries, _, views, prompts = data
    model = TIMO(alpha=alpha, gamma=gamma, text_fraction=text_fraction, device="cpu").fit(
        support, labels, text_features=text, prompt_features=prompts, view_features=views)
    n_text = text_sample_count(text_fraction, prompts.shape[1])
    expected, w = timo_reference(support, labels, views, prompts, queries, alpha=alpha, gamma=gamma, n_text=n_text)
    assert _rel_err(model.decision_function(queries), expected) < 1e-4
    assert _rel_err(model.decision_function(queries), expected) < 1e-10     # float64 in, float64 out
    np.testing.assert_allclose(model.igt_weights_, w, rtol=1e-10)
    assert model.n_text_samples_ == n_text and model.n_prompts_ == 4
    assert model.n_samples_ == 5 * n_text + 3 * len(labels)
    # IGT weighs the prompts: they differ within each class
    assert (np.ptp(model.igt_weights_, axis=1) > 1e-3).all()


def test_float32_torch_input_within_float32_precision(data):
    text, support, labels, queries, _, views, prompts = data
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    model = TIMO(alpha=0.3, gamma=20.0, device="cpu").fit(f32(support), torch.as_tensor(labels),
                                                          text_features=f32(text), prompt_features=f32(prompts),
                                                          view_features=f32(views))
    logits = model.decision_function(f32(queries))
    assert isinstance(logits, torch.Tensor) and logits.dtype == torch.float32
    expected, _ = timo_reference(support, labels, views, prompts, queries, alpha=0.3, gamma=20.0, n_text=4)
    assert _rel_err(logits.numpy(), expected) < 1e-4


def test_projected_features_go_through_the_same_formulas(data):
    text, support, labels, queries, _, views, prompts = data
    patches = np.repeat(support[:, None, :], 2, axis=1)
    model = TIMO(alpha=1.5, gamma=10.0, projector=LinearProjectorDouble(seed=4), device="cpu").fit(
        support, labels, text_features=text, prompt_features=prompts, view_features=views,
        patch_features=patches)
    a_v, a_l = LinearProjectorDouble.maps(4, text.shape[1])
    expected, _ = timo_reference(support, labels, views, prompts, queries, alpha=1.5, gamma=10.0, n_text=4,
                                 vision=a_v, language=a_l)
    assert _rel_err(model.decision_function(queries), expected) < 1e-10


def test_one_prompt_per_class_warns_that_igt_has_nothing_to_weigh(data):
    text, support, labels, queries, _, views, _ = data
    with pytest.warns(UserWarning, match="IGT has nothing to weigh"):
        model = TIMO(alpha=2.0, device="cpu").fit(support, labels, text_features=text, view_features=views)
    np.testing.assert_array_equal(model.igt_weights_, np.ones((5, 1)))
    expected, _ = timo_reference(support, labels, views, text[:, None, :], queries, alpha=2.0, gamma=50.0, n_text=1)
    assert _rel_err(model.decision_function(queries), expected) < 1e-10
    assert model.fit_details()["igt_has_nothing_to_weigh"] is True


def test_bad_prompt_features_are_refused(data):
    text, support, labels, _, _, _, prompts = data
    with pytest.raises(ValueError, match=r"prompt_features must be \[C, P, D\] = \[5, P, 12\]"):
        TIMO().fit(support, labels, text_features=text, prompt_features=prompts[:4])
    bad = prompts.copy()
    bad[2, 1] = 0.0
    with pytest.raises(ValueError, match=r"prompt_features\[2, 1\] is zero"):
        TIMO().fit(support, labels, text_features=text, prompt_features=bad)
    with pytest.raises(ValueError, match="text_fraction must be"):
        TIMO(text_fraction=1.5).fit(support, labels, text_features=text, prompt_features=prompts)
    with pytest.raises(ValueError, match="gamma_selection"):
        TIMOS(gamma_selection="best").fit(support, labels, text_features=text, prompt_features=prompts)


def _released_search(data, gammas, fractions, alphas, selection):
    """TIMO-S's search as a plain loop: gamma first ("zero-shot": the IGT head's accuracy), then
    the first (text_fraction, alpha) maximum; "joint": the first (gamma, text_fraction, alpha) maximum."""
    text, support, labels, queries, query_labels, views, prompts = data
    best, best_key = -1, None
    head_best, head_gamma = -1, None
    for g in gammas:
        zs, _ = timo_reference(support, labels, views, prompts, queries, alpha=0.0, gamma=g, n_text=1)
        acc = int((zs.argmax(1) == query_labels).sum())
        if acc > head_best:
            head_best, head_gamma = acc, g
    for g in gammas:
        if selection == "zero-shot" and g != head_gamma:
            continue
        for b in fractions:
            for a in alphas:
                n_text = text_sample_count(b, prompts.shape[1])
                logits, _ = timo_reference(support, labels, views, prompts, queries, alpha=a, gamma=g, n_text=n_text)
                acc = int((logits.argmax(1) == query_labels).sum())
                if acc > best:
                    best, best_key = acc, (g, b, a)
    return best, best_key


@pytest.mark.parametrize("selection", ["zero-shot", "joint"])
def test_timo_s_search_equals_the_plain_loop(data, selection):
    text, support, labels, queries, query_labels, views, prompts = data
    grid = {"gamma": [1.0, 5.0, 50.0], "text_fraction": [0.0, 0.5, 1.0], "alpha": [0.01, 1.0, 100.0]}
    model = TIMOS(gamma_selection=selection, device="cpu").fit(
        support, labels, text_features=text, prompt_features=prompts, view_features=views)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an edge winner warns
        result = validation_search(model, queries, query_labels, grid)
    best, (g, b, a) = _released_search(data, grid["gamma"], grid["text_fraction"], grid["alpha"], selection)
    assert result.param_names_ == ("gamma", "text_fraction", "alpha")
    assert result.best_params_ == {"gamma": g, "text_fraction": b, "alpha": a}
    assert round(result.best_score_ * len(query_labels)) == best
    assert model.score(queries, query_labels) * len(query_labels) == pytest.approx(best)


def test_timo_searches_alpha_on_the_registered_grid(data):
    text, support, labels, queries, query_labels, views, prompts = data
    model = TIMO(device="cpu").fit(support, labels, text_features=text, prompt_features=prompts, view_features=views)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = validation_search(model, queries, query_labels)
    np.testing.assert_allclose(result.grid_["alpha"], 10.0 ** np.arange(-2, 7))
    for i, alpha in enumerate(result.grid_["alpha"]):
        model.set_params(alpha=alpha)
        assert result.scores_[i] == pytest.approx(model.score(queries, query_labels))


def test_registry_entries():
    timo, timo_s = get_method("timo"), get_method("TIMO-S")
    assert timo.uses_prompts and timo_s.uses_prompts and timo.uses_views
    assert timo.search_axes == ("alpha",) and timo_s.search_axes == ("gamma", "text_fraction", "alpha")
    grid = timo_s.grid({"timo": {"search": {"gamma": [10, 20]}}})
    assert list(grid["gamma"]) == [10.0, 20.0] and len(grid["text_fraction"]) == 10
    with pytest.raises(ValueError, match=r"timo.search.text_fraction' must be a list of numbers in \[0, 1\]"):
        timo_s.grid({"timo": {"search": {"text_fraction": [2.0]}}})
    assert [text_sample_count(b, 50) for b in np.linspace(0, 1, 10)] == \
        [int(t) for t in torch.linspace(1, 100, 10)]  # the released code's counts

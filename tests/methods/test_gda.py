"""GDA against a dense float64 implementation of its formulas (synthetic and real features)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from _doubles import LinearProjectorDouble, _unit, make_data

from ssp.methods.gda import GDA
from ssp.methods.search import validation_search


def gda_reference(samples, labels, text, queries, alpha, n_classes=None, query_text=None,
                  gda_queries=None, logit_scale=100.0):
    """Dense float64 GDA: means, ddof=1 covariance of the centred samples, P = D pinv((N-1) S +
    tr(S) I), W = P mu^T, b = log(1/C) - mu P mu^T / 2; logits s x T^T + alpha (x W + b).
    ``query_text`` / ``gda_queries``: the queries of each term when they differ (projections)."""
    x = _unit(np.asarray(samples, dtype=np.float64))
    n, dim = x.shape
    n_classes = n_classes or len(text)
    means = np.stack([x[labels == k].mean(0) for k in range(n_classes)])
    centred = x - means[labels]
    cov = np.cov(centred.T) if n > 1 else np.zeros((dim, dim))
    precision = dim * np.linalg.pinv((n - 1) * cov + np.trace(cov) * np.eye(dim))
    w = precision @ means.T
    b = np.log(1.0 / n_classes) - 0.5 * np.einsum("cd,de,ce->c", means, precision, means)
    q_zs = _unit(np.asarray(queries if query_text is None else query_text, dtype=np.float64))
    q_gda = _unit(np.asarray(queries if gda_queries is None else gda_queries, dtype=np.float64))
    return logit_scale * q_zs @ _unit(np.asarray(text, dtype=np.float64)).T + alpha * (q_gda @ w + b)


def _rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def data():
    text, support, labels, queries, query_labels = make_data(n_classes=5, dim=12, shots=(4, 3, 5, 4, 3),
                                                             n_query=60, seed=3)
    rng = np.random.default_rng(0)
    views = support[None] + 0.3 * rng.normal(size=(3,) + support.shape)
    return text, support, labels, queries, query_labels, views


@pytest.mark.parametrize("alpha", [0.0, 0.7, 30.0])
def test_logits_equal_the_dense_formulas_on_the_support_features(data, alpha):
    text, support, labels, queries, _, _ = data
    model = GDA(alpha=alpha, device="cpu").fit(support, labels, text_features=text)
    expected = gda_reference(support, labels, text, queries, alpha)
    assert _rel_err(model.decision_function(queries), expected) < 1e-10
    assert model.training_inputs_ == "keys" and model.n_views_ == 0 and model.n_samples_ == len(labels)


def test_views_are_the_samples_when_given(data):
    text, support, labels, queries, _, views = data
    model = GDA(alpha=2.0, device="cpu").fit(support, labels, text_features=text, view_features=views)
    samples = _unit(views).reshape(-1, support.shape[1])
    expected = gda_reference(samples, np.tile(labels, len(views)), text, queries, 2.0)
    assert _rel_err(model.decision_function(queries), expected) < 1e-10
    assert model.training_inputs_ == "views" and model.n_views_ == 3 and model.n_samples_ == 3 * len(labels)
    # not the same model as on the keys
    keys_only = GDA(alpha=2.0, device="cpu").fit(support, labels, text_features=text)
    assert _rel_err(keys_only.decision_function(queries), expected) > 1e-3
    with pytest.raises(ValueError, match=r"view_features must be \[E, N, D\]"):
        GDA().fit(support, labels, text_features=text, view_features=views[:, :-1])


def test_one_sample_per_class_warns_and_equals_zero_shot(data):
    text, support, labels, queries, _, _ = data
    first = np.array([np.flatnonzero(labels == k)[0] for k in range(len(text))])
    with pytest.warns(UserWarning, match="covariance is zero"):
        model = GDA(alpha=5.0, device="cpu").fit(support[first], labels[first], text_features=text)
    zero_shot = 100.0 * _unit(queries) @ _unit(text).T
    logits = model.decision_function(queries)
    np.testing.assert_allclose(logits - logits[:, :1], zero_shot - zero_shot[:, :1], atol=1e-9)
    with pytest.warns(UserWarning, match="covariance is zero"):  # identical views: still one point
        GDA().fit(support[first], labels[first], text_features=text,
                  view_features=np.stack([support[first]] * 3))
    # one view per class is not enough either, two are
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GDA().fit(support[first], labels[first], text_features=text,
                  view_features=np.stack([support[first], support[first] + 0.1]))


def test_projected_features_go_through_the_same_formulas(data):
    """With a projector ("paper" routing): GDA statistics on the vision-projected support, the
    GDA term on the vision-projected query, the zero-shot term on the language view."""
    text, support, labels, queries, _, _ = data
    patches = np.repeat(support[:, None, :], 2, axis=1)
    model = GDA(alpha=1.5, projector=LinearProjectorDouble(seed=2), device="cpu").fit(
        support, labels, text_features=text, patch_features=patches)  # the projector is fitted here
    projector = model.projector_
    a_v, a_l = LinearProjectorDouble.maps(2, text.shape[1])
    proj_support = _unit(_unit(support) @ a_v.T)
    expected = gda_reference(proj_support, labels, projector.text_features_.numpy(), queries, 1.5,
                             query_text=_unit(queries) @ a_l.T, gda_queries=_unit(queries) @ a_v.T)
    assert _rel_err(model.decision_function(queries), expected) < 1e-10


def test_search_scores_every_alpha_like_predict(data):
    text, support, labels, queries, query_labels, views = data
    model = GDA(device="cpu").fit(support, labels, text_features=text, view_features=views)
    grid = {"alpha": [0.0, 0.01, 0.1, 1.0, 10.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an edge winner may warn
        result = validation_search(model, queries, query_labels, grid)
    for i, alpha in enumerate(grid["alpha"]):
        model.set_params(alpha=alpha)
        assert result.scores_[i] == pytest.approx(model.score(queries, query_labels))
    assert result.param_names_ == ("alpha",)
    assert result.best_params_["alpha"] == grid["alpha"][int(np.argmax(result.scores_))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = validation_search(model, queries, query_labels)  # the registered decade grid
    np.testing.assert_allclose(default.grid_["alpha"], 10.0 ** np.arange(-4, 5))


def test_torch_float32_input_matches_within_float32_precision(data):
    text, support, labels, queries, _, views = data
    t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in
         dict(text=text, support=support, queries=queries, views=views).items()}
    model = GDA(alpha=0.5, device="cpu").fit(t["support"], torch.as_tensor(labels),
                                             text_features=t["text"], view_features=t["views"])
    logits = model.decision_function(t["queries"])
    assert isinstance(logits, torch.Tensor) and logits.dtype == torch.float32
    expected = gda_reference(_unit(views).reshape(-1, support.shape[1]), np.tile(labels, 3), text,
                             queries, 0.5)
    assert _rel_err(logits.numpy(), expected) < 1e-4


def test_real_stanford_cars_logits_equal_the_dense_formulas(tip_cache_root):
    from ssp.features.tip_cache import load_tip_adapter_cache

    folder = tip_cache_root / "stanford_cars"
    if not (folder / "text_weights.pt").is_file():
        pytest.skip("stanford_cars cache with text_weights.pt not found")
    cache = load_tip_adapter_cache(folder, 4)
    support, labels = cache.support_features.numpy(), cache.support_labels.numpy()
    text, queries = cache.text_features.numpy(), cache.val_features[:300].numpy()
    model = GDA(alpha=1.0, device="cpu").fit(support, labels, text_features=text)
    expected = gda_reference(support.astype(np.float64), labels, text, queries, 1.0)
    assert _rel_err(model.decision_function(queries), expected) < 1e-4


def test_the_runner_fits_gda_on_the_views_and_records_it(data):
    """run_method passes the support's view_features to methods registered with uses_views."""
    from ssp.features.types import Features
    from ssp.run.config import load_config
    from ssp.run.pipeline import run_method

    text, support, labels, queries, query_labels, views = data
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    split = Features(t(queries[:30]), t(query_labels[:30]))
    test = Features(t(queries[30:]), t(query_labels[30:]))
    cfg = load_config("dtd")
    with_views = run_method("gda", cfg, Features(t(support), t(labels), view_features=t(views)),
                            split, test, t(text), device="cpu")
    keys_only = run_method("gda", cfg, Features(t(support), t(labels)), split, test, t(text), device="cpu")
    assert with_views.details["training"]["training_inputs"] == "views"
    assert keys_only.details["training"]["training_inputs"] == "keys"
    assert set(with_views.hyperparameters) == {"alpha"}
    model = GDA(alpha=with_views.hyperparameters["alpha"], device="cpu").fit(
        support, labels, text_features=text, view_features=views)
    assert with_views.test_accuracy == pytest.approx(100 * model.score(queries[30:], query_labels[30:]))


def test_new_class_transfer_matches_the_published_construction_densely():
    """Base-to-new: the new classes' means / precision as in GDA's main_base2new.py (the 64 samples
    nearest each text embedding plus 16 copies of it; a per-class KS precision around the text,
    averaged), here with dense pinv in float64 and more samples than neighbours."""
    gen = torch.Generator().manual_seed(0)
    n_classes, dim, shots, n_views, n_base = 6, 16, 30, 3, 3
    unit = lambda t: torch.nn.functional.normalize(t, dim=-1)  # noqa: E731
    text = unit(torch.randn(n_classes, dim, generator=gen, dtype=torch.float64))
    y = torch.arange(n_base).repeat_interleave(shots)
    x = unit(text[y] + 0.5 * torch.randn(len(y), dim, generator=gen, dtype=torch.float64))
    views = unit(x[None] + 0.3 * torch.randn(n_views, len(y), dim, generator=gen, dtype=torch.float64))
    model = GDA(alpha=0.7, device="cpu").fit(x, y, text_features=text[:n_base], view_features=views)
    new_text = text[n_base:]
    queries = unit(torch.randn(10, dim, generator=gen, dtype=torch.float64))
    got = model.new_class_logits(queries, new_text)

    samples = views.reshape(-1, dim)
    k = 64
    assert samples.shape[0] > k

    def neighbours(w):
        return samples[torch.topk(w @ samples.T, k=k).indices]

    def covariance(v, mu):
        return (v - mu).T @ (v - mu) / (v.shape[0] - 1)

    mu = torch.stack([torch.cat([neighbours(w), w[None].repeat(16, 1)]).mean(0) for w in new_text])
    precision = torch.stack([
        dim * torch.linalg.pinv((k - 1) * covariance(neighbours(w), w[None])
                                + covariance(neighbours(w), w[None]).trace() * torch.eye(dim, dtype=torch.float64))
        for w in new_text]).mean(0)
    weights = precision @ mu.T
    bias = math.log(1 / len(new_text)) - 0.5 * torch.einsum("nd,dc,nc->n", mu, precision, mu)
    reference = 100 * queries @ new_text.T + 0.7 * (queries @ weights + bias)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-9)
    assert model.new_class_details_["neighbours"] == k

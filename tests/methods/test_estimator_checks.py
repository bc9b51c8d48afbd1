"""Rules every estimator follows: the registry's methods and SSPProjector alike.

scikit-learn's estimator checks (every check that can apply; each skip gives its reason),
keyword-only constructors, hyper-parameters
validated at ``fit``, one rule for the text classifier, fitted attributes of the input's kind.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _doubles import CLASSES_ARE_TEXT_ROWS, CLASSIFIER_SKIPS, make_data, sklearn_checked
from sklearn.utils.estimator_checks import parametrize_with_checks

from ssp.methods.ssp.projector import SSPProjector
from ssp.methods.registry import registered_methods
from ssp.unmix.projector import UnmixProjector

SPECS = {spec.name: spec for spec in registered_methods()}
ESTIMATORS = [*SPECS, "ssp-projector"]


def _class(name: str) -> type:
    return SSPProjector if name == "ssp-projector" else SPECS[name].estimator


def _data(dtype=np.float64):
    text, support, labels, queries, query_labels = make_data(n_classes=4, dim=8, shots=(3, 2, 3, 2),
                                                             n_query=12, dtype=dtype)
    rng = np.random.default_rng(1)
    patches = (support[:, None, :] + 0.5 * rng.normal(size=(len(labels), 5, 8))).astype(dtype)
    return dict(text=text, support=support, labels=labels, queries=queries,
                query_labels=query_labels, patches=patches)


def _fit(name: str, estimator, data, **changes):
    """Fit ``estimator`` the way its kind is fitted (``changes`` replace inputs)."""
    d = {**data, **changes}
    if name == "ssp-projector":
        return estimator.fit(d["patches"], d["labels"], image_features=d["support"],
                             text_features=d["text"])
    extra = {}
    if SPECS[name].fine_tuned:
        extra = dict(val_features=d["queries"], val_labels=d["query_labels"])
    return estimator.fit(d["support"], d["labels"], text_features=d["text"], **extra)


# ------------------------------------------------------------------ one rule for the text classifier


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("bad,match", [(0.0, "are all zero"), (np.nan, "NaN or infinite"),
                                       (np.inf, "NaN or infinite")])
def test_every_estimator_rejects_zero_or_nonfinite_text_rows(name, bad, match):
    data = _data()
    text = data["text"].copy()
    text[2] = bad if bad == 0.0 else text[2]
    if bad != 0.0:
        text[2, 3] = bad
    with pytest.raises(ValueError, match=match):
        _fit(name, _class(name)(), data, text=text)
    # the same estimator fits the clean classifier
    _fit(name, _class(name)(), data)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_estimator_refuses_a_transposed_text_classifier(name):
    """A [D, C] head with unit-norm columns (Tip-Adapter's layout) must not be read as D classes."""
    data = _data()
    text = data["text"] / np.linalg.norm(data["text"], axis=1, keepdims=True)
    wide = dict(_data(), text=np.tile(text, (1, 2)) / np.sqrt(2))    # [4, 16] unit rows: fine
    _fit(name, _class(name)(), {**wide, "support": np.tile(data["support"], (1, 2)),
                                "queries": np.tile(data["queries"], (1, 2)),
                                "patches": np.tile(data["patches"], (1, 1, 2))})
    square = np.ascontiguousarray(text.T)                              # [8, 4]: unit columns
    with pytest.raises(ValueError, match=r"unit-norm columns but not unit-norm rows: it is a \[D, C\]"):
        _fit(name, _class(name)(), data, text=square)


# ------------------------------------------------------------------ one home per rule


def test_one_int_rule_accepts_numpy_integers_and_rejects_bools():
    from ssp._checks import check_int

    assert check_int(np.int64(2), "views") == 2 and type(check_int(np.int32(3), "views")) is int
    assert check_int(0, "seed", minimum=0) == 0 and check_int(None, "n", allow_none=True) is None
    for bad in (True, np.bool_(True), 2.0, "2", 0, -1, None):
        with pytest.raises(ValueError, match=r"views must be a positive integer, got"):
            check_int(bad, "views")


@pytest.mark.parametrize("make", [
    lambda v: _fit("tip-adapter", SPECS["tip-adapter"].estimator(chunk_size=v), _data()),
    lambda v: _fit("ape", SPECS["ape"].estimator(n_channels=v), _data()),
    lambda v: __import__("ssp.data", fromlist=["x"]).make_fewshot_splits(_toy_dataset(), v, 1),
    lambda v: __import__("ssp.data", fromlist=["x"]).make_fewshot_splits(_toy_dataset(), 1, 1, val_policy=v),
], ids=["chunk_size", "n_channels", "shots", "val_policy"])
def test_call_sites_share_the_int_rule(make):
    make(np.int64(2))  # numpy integers are integers
    for bad in (True, 2.5, 0):
        with pytest.raises(ValueError, match="must be a positive integer"):
            make(bad)


def _toy_dataset():
    from ssp.data import DatasetSplits, Sample

    samples = [Sample(f"/img/{s}{i}.jpg", i % 2, f"c{i % 2}") for s in "abc" for i in range(8)]
    return DatasetSplits("toy", Path("/img"), ["c0", "c1"], ["a {}."], samples[:8], samples[8:16],
                         samples[16:])


def test_option_vocabularies_have_one_home():
    from ssp import _checks
    from ssp.backbone import model as backbone
    from ssp.cli import fewshot as cli
    from ssp.data import fewshot
    from ssp.methods import base as classifiers

    assert classifiers.ROUTINGS is _checks.ROUTINGS
    assert backbone.PRECISIONS is _checks.PRECISIONS
    assert fewshot.VAL_POLICIES is _checks.VAL_POLICIES
    choices = {a.dest: a.choices for a in cli.build_parser()._actions}
    assert tuple(choices["precision"]) == _checks.PRECISIONS
    assert tuple(choices["ssp_routing"]) == _checks.ROUTINGS
    for value in (None, "none", " None "):
        assert _checks.is_random_weights(value)
    for value in ("openai", "", "nonee", 0):
        assert not _checks.is_random_weights(value)


# ------------------------------------------------------------------ scikit-learn's estimator API


@pytest.mark.parametrize("name", ESTIMATORS)
def test_constructor_parameters_are_keyword_only(name):
    import inspect

    params = list(inspect.signature(_class(name).__init__).parameters.values())[1:]
    assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    with pytest.raises(TypeError):
        _class(name)(1.0)


_BAD_PARAMS = [("alpha", "abc"), ("alpha", float("nan")), ("beta", None), ("beta", True),
               ("gamma", "0.1"), ("logit_scale", float("inf")), ("routing", "fancy"),
               ("chunk_size", 0), ("chunk_size", 2.0), ("n_channels", True), ("n_channels", -3),
               ("criterion_weights", (1.0,)), ("criterion_weights", "ab"),
               ("criterion_weights", (0.5, "x")), ("device", "tpu"),
               ("patch_top_k", 0), ("class_top_k", np.bool_(True)), ("global_weight", -1.0),
               ("rank", 1.5), ("rank_tol", "x"), ("epochs", -1), ("momentum", 1.0), ("C", 0.0),
               ("max_iter", 0)]


@pytest.mark.parametrize("name", ESTIMATORS)
def test_hyper_parameters_are_validated_at_fit(name):
    data = _data()
    cls = _class(name)
    checked = 0
    for param, value in _BAD_PARAMS:
        if param not in cls().get_params():
            continue
        estimator = cls(**{param: value})  # stored as given, never validated in __init__
        assert estimator.get_params()[param] is value
        with pytest.raises((ValueError, RuntimeError), match=param if param != "device" else "device"):
            _fit(name, estimator, data)
        assert not [k for k in vars(estimator) if k.endswith("_")]  # nothing half-fitted
        checked += 1
    assert checked >= 3


# ------------------------------------------------------------------ one array kind


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_fitted_arrays_and_outputs_follow_the_input_kind(name, kind):
    """numpy in -> numpy fitted arrays and outputs; torch in -> torch on the input's device.
    ``classes_`` and SSPProjector's ``class_ranks_`` are numpy always (scikit-learn's ``classes_``)."""
    data = _data()
    if kind == "torch":
        data = {k: torch.as_tensor(v) for k, v in data.items()}
    array_type = np.ndarray if kind == "numpy" else torch.Tensor
    estimator = _fit(name, _class(name)(device="cpu"), data)
    fitted = {k: v for k, v in vars(estimator).items()
              if k.endswith("_") and not k.startswith("_") and isinstance(v, (np.ndarray, torch.Tensor))}
    assert fitted
    for attr, value in fitted.items():
        expected = np.ndarray if attr in ("classes_", "class_ranks_") else array_type
        assert isinstance(value, expected), (attr, type(value))
    outputs = ([estimator.transform(data["queries"], view=v) for v in ("vision", "language")]
               if name == "ssp-projector" else
               [estimator.predict(data["queries"]), estimator.decision_function(data["queries"])])
    for out in outputs:
        assert isinstance(out, array_type)


@pytest.mark.parametrize("name", [n for n in SPECS if not SPECS[n].fine_tuned])
def test_score_is_a_fraction(name):
    data = _data()
    estimator = _fit(name, _class(name)(), data)
    score = estimator.score(data["queries"], data["query_labels"])
    accuracy = float(np.mean(estimator.predict(data["queries"]) == data["query_labels"]))
    assert 0.0 <= score <= 1.0 and score == pytest.approx(accuracy)


@pytest.mark.parametrize("name", [n for n in SPECS if not SPECS[n].fine_tuned])
def test_score_refuses_labels_outside_the_classes(name):
    """A label >= C used to count as a silent miss (score 0.0); now it raises, like a negative one."""
    data = _data()
    estimator = _fit(name, _class(name)(), data)
    for bad, match in ((4, r"y contains class 4 but only 4 classes \(0..3\)"), (-1, "y must be >= 0")):
        labels = data["query_labels"].copy()
        labels[0] = bad
        with pytest.raises(ValueError, match=match):
            estimator.score(data["queries"], labels)


def test_unmix_projector_score_refuses_labels_outside_the_classes():
    data = _data()
    projector = UnmixProjector(epochs=1, embed_dim=4, hidden_dim=8, progress=False, device="cpu").fit(
        data["support"], data["labels"], text_features=data["text"])
    assert 0.0 <= projector.score(data["queries"], data["query_labels"]) <= 1.0
    with pytest.raises(ValueError, match="y contains class 7 but only 4 classes"):
        projector.score(data["queries"], np.full(len(data["queries"]), 7))


# ------------------------------------------------------------------ fit signatures say what they take


@pytest.mark.parametrize("name", ESTIMATORS)
def test_fit_takes_features_then_labels_then_named_side_inputs(name):
    import inspect

    params = list(inspect.signature(_class(name).fit).parameters.values())[1:]
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    named = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    if name == "ssp-projector":
        assert positional == ["patch_features", "labels"]
        assert {"image_features", "text_features"} <= named
    else:
        assert positional == ["image_features", "labels"]
        assert {"text_features", "patch_features"} <= named


def test_projector_fit_transform_returns_the_projected_support_features():
    data = _data()
    kwargs = dict(image_features=data["support"], text_features=data["text"])
    for view in ("vision", "language"):
        out = SSPProjector(device="cpu").fit_transform(data["patches"], data["labels"], view=view,
                                                       **kwargs)
        fitted = SSPProjector(device="cpu").fit(data["patches"], data["labels"], **kwargs)
        assert out.shape == data["support"].shape
        np.testing.assert_allclose(out, fitted.transform(data["support"], view=view), atol=1e-12)


def test_a_subclass_setting_a_public_fitted_tensor_is_used_and_published():
    """Subclasses (e.g. fine-tuned caches) may assign fitted tensors directly in ``_fit``: the
    computations then use them, and they are published in the input's kind like the others."""
    from ssp.methods.cache_models import TipAdapter

    class ShiftedKeys(TipAdapter):
        def _fit(self, *args, **inputs):
            super()._fit(*args, **inputs)
            self.keys_ = -self._torch.keys_  # flipped keys: a different cache term

    data = _data()
    plain = TipAdapter(alpha=3.0).fit(data["support"], data["labels"], text_features=data["text"])
    flipped = ShiftedKeys(alpha=3.0).fit(data["support"], data["labels"], text_features=data["text"])
    assert isinstance(flipped.keys_, np.ndarray)
    np.testing.assert_allclose(flipped.keys_, -plain.keys_)
    assert not np.allclose(flipped.decision_function(data["queries"]),
                           plain.decision_function(data["queries"]))


# ------------------------------------------------------------------ scikit-learn's estimator checks
# (UnmixProjector's run in tests/unmix/test_unmix_projector.py; the subclass and the shared skip
# reasons are in tests/_doubles.py)

_CHECKED = [sklearn_checked(spec.estimator, __name__) for spec in SPECS.values()]
_CHECKED.append(sklearn_checked(SSPProjector, __name__, patches=True))
globals().update({c.__name__: c for c in _CHECKED})  # picklable by name


def _instances():
    out = []
    for checked in _CHECKED:
        params = {"device": "cpu"}
        if "epochs" in checked().get_params():  # fine-tuned: one short training
            params["epochs"] = 1
        out.append(checked(**params))
    return out


_EVERY_CLASS_NEEDS_SUPPORT = ("every class (text row) needs at least one support sample; the check's labels "
                              "skip class 0 (e.g. y in {1, 2})")
_SUPPORT_SKIPS = {name: _EVERY_CLASS_NEEDS_SUPPORT
                  for name in ("check_estimators_dtypes", "check_fit2d_1sample", "check_fit2d_1feature")}


_STREAM_ORDER = ("a test-time method streams over X in order and adapts as it goes: the prediction of a "
                 "query depends on the queries streamed before it")


def _expected_failures(estimator) -> dict[str, str]:
    """Checks that cannot apply, with the reason (strict: a listed check that passes fails)."""
    if isinstance(estimator, SSPProjector):
        return dict(_SUPPORT_SKIPS)
    skips = dict(CLASSIFIER_SKIPS)
    if isinstance(estimator, SPECS["ape"].estimator):  # APE and APE-T
        skips.update(_SUPPORT_SKIPS, check_classifier_data_not_an_array=_EVERY_CLASS_NEEDS_SUPPORT)
    elif isinstance(estimator, SPECS["gda"].estimator):  # class means of every class are needed
        skips.update(_SUPPORT_SKIPS, check_classifier_data_not_an_array=_EVERY_CLASS_NEEDS_SUPPORT)
    elif not isinstance(estimator, SPECS["linear-probe"].estimator):
        # APE refuses the classes without support instead; the linear probe refuses a one-class
        # support set (logistic regression needs two), as scikit-learn expects
        skips["check_classifiers_one_label"] = CLASSES_ARE_TEXT_ROWS
    if any(spec.test_time and isinstance(estimator, spec.estimator) for spec in SPECS.values()):
        skips.update(check_methods_sample_order_invariance=_STREAM_ORDER,
                     check_methods_subset_invariance=_STREAM_ORDER)
    return skips


@parametrize_with_checks(_instances(), expected_failed_checks=_expected_failures, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. APE's clamped n_channels on 2-wide data
        check(estimator)

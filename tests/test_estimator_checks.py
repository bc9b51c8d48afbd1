"""Rules every estimator follows: the registry's methods and SSPProjector alike.

scikit-learn's applicable estimator checks, keyword-only constructors, hyper-parameters
validated at ``fit``, one rule for the text classifier, fitted attributes of the input's kind.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _doubles import make_data
from ssp.projector import SSPProjector
from ssp.registry import registered_methods

SPECS = {spec.name: spec for spec in registered_methods()}
ESTIMATORS = [*SPECS, "ssp-projector"]


def _class(name: str) -> type:
    return SSPProjector if name == "ssp-projector" else SPECS[name].estimator_class()


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


# ------------------------------------------------------------------ one home per rule


def test_one_int_rule_accepts_numpy_integers_and_rejects_bools():
    from ssp._checks import check_int
    from ssp._utils import check_int as utils_check_int

    assert utils_check_int is check_int
    assert check_int(np.int64(2), "views") == 2 and type(check_int(np.int32(3), "views")) is int
    assert check_int(0, "seed", minimum=0) == 0 and check_int(None, "n", allow_none=True) is None
    for bad in (True, np.bool_(True), 2.0, "2", 0, -1, None):
        with pytest.raises(ValueError, match=r"views must be a positive integer, got"):
            check_int(bad, "views")


@pytest.mark.parametrize("make", [
    lambda v: _fit("tip-adapter", SPECS["tip-adapter"].estimator_class()(chunk_size=v), _data()),
    lambda v: _fit("ape", SPECS["ape"].estimator_class()(n_channels=v), _data()),
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
    from ssp import _checks, backbone, classifiers, cli
    from ssp.data import fewshot

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

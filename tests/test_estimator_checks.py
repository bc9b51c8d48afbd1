"""Rules every estimator follows: the registry's methods and SSPProjector alike.

scikit-learn's applicable estimator checks, keyword-only constructors, hyper-parameters
validated at ``fit``, one rule for the text classifier, fitted attributes of the input's kind.
"""
from __future__ import annotations

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

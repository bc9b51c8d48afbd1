"""scikit-learn's "not fitted yet" check."""
from __future__ import annotations

from typing import Any


def check_is_fitted(estimator: Any, attribute: str) -> None:
    """Raise sklearn's NotFittedError when ``attribute`` is missing."""
    from sklearn.exceptions import NotFittedError

    if not hasattr(estimator, attribute):
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet; call 'fit' first."
        )

"""Array inputs: numpy arrays or torch tensors in, checked tensors out, and results back in the
kind the caller gave.

Every public estimator accepts numpy arrays or torch tensors and returns the kind it was given
(predictions, transforms and fitted array attributes; see :mod:`ssp.methods.base`). Internally
everything is a torch tensor on ``self.device_``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ssp._checks import option
from ssp._lazy import torch
from ssp._utils.normalize import unit_norm_axis

ArrayLike = Any  # np.ndarray | torch.Tensor


def to_tensor(
    x: ArrayLike,
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    ndim: int | None = None,
    allow_nonfinite: bool = False,
) -> torch.Tensor:
    """Convert ``x`` to a tensor, checking dimensionality and finiteness.

    Floating inputs keep float64 when given float64 and ``dtype`` is None; everything else
    floating (float16, bfloat16, float32) becomes float32 (half-precision caches are promoted:
    SVDs need float32 or better). Object arrays of numbers and array-likes are converted;
    complex data and scipy.sparse matrices are refused (scikit-learn's messages).
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif hasattr(x, "toarray") and hasattr(x, "nnz"):  # scipy.sparse
        raise TypeError(f"{name}: sparse input is not supported (dense features only); pass {name}.toarray()")
    elif (isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple))
          or hasattr(x, "__array__")):
        a = np.asarray(x)
        if a.dtype == object:  # e.g. a pandas object column of numbers
            try:
                a = a.astype(np.float64)
            except (TypeError, ValueError) as err:
                raise TypeError(f"{name} must hold numbers ({err})") from None
        if a.dtype.kind in "US":
            raise ValueError(f"{name} must hold numbers, got strings (dtype {a.dtype})")
        if any(stride < 0 for stride in a.strides):  # a reversed view (x[::-1]): torch needs a copy
            a = a.copy()
        t = torch.as_tensor(a)
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if t.is_complex():
        raise ValueError(f"{name}: Complex data not supported (got {t.dtype})")
    if ndim is not None and t.ndim != ndim:
        hint = ""
        if ndim == 2 and t.ndim == 1:
            hint = (f"; Reshape your data with {name}.reshape(-1, 1) for a single feature or "
                    f"{name}.reshape(1, -1) for a single sample")
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}{hint}")
    if dtype is None and t.is_floating_point() and t.dtype != torch.float64:
        dtype = torch.float32
    t = t.to(device=device, dtype=dtype) if (dtype is not None or device is not None) else t
    if t.is_floating_point() and not allow_nonfinite and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values; clean the features first")
    return t


def check_features(x: ArrayLike, name: str, *, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Features ``[N, D]`` as a finite tensor with ``N, D >= 1`` (scikit-learn's wording for the
    empty cases)."""
    t = to_tensor(x, name, ndim=2, device=device, dtype=dtype)
    for axis, what in ((0, "sample"), (1, "feature")):
        if t.shape[axis] < 1:
            raise ValueError(f"{name} has 0 {what}(s) (shape={tuple(t.shape)}) while a minimum of 1 is required.")
    return t


def check_label_dtype(labels: ArrayLike, name: str = "labels") -> None:
    """Refuse labels that are not numbers (strings, objects) with scikit-learn's wording."""
    kind = labels.dtype.kind if isinstance(labels, np.ndarray) else None
    if kind is not None and kind not in "biuf":
        raise ValueError(f"Unknown label type: {name} must be integer class indices 0..C-1 (rows of the "
                         f"text classifier), got dtype {labels.dtype}")


def check_labels(labels: ArrayLike, n_samples: int, n_classes: int | None = None,
                 *, name: str = "labels", device: torch.device | None = None,
                 samples_from: str = "", classes_from: str = "text_features") -> torch.Tensor:
    """Integer labels ``[N]`` in ``0..n_classes-1`` as an int64 tensor.

    ``samples_from`` / ``classes_from`` name where ``n_samples`` and ``n_classes`` come from, for
    the error messages (e.g. a features file and a values file).
    """
    check_label_dtype(labels, name)
    y = to_tensor(labels, name, device=device, ndim=1)
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise ValueError(f"{name} must be integer class indices, got continuous (non-integral) values")
    elif y.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class indices, got booleans")
    y = y.long()
    if y.shape[0] != n_samples:
        where = f" in {samples_from}" if samples_from else ""
        raise ValueError(f"{name} has {y.shape[0]} entries but there are {n_samples} samples{where}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} must be >= 0, found {int(y.min())}")
    if n_classes is not None and y.numel() and int(y.max()) >= n_classes:
        raise ValueError(
            f"{name} contains class {int(y.max())} but only {n_classes} classes (0..{n_classes - 1}) "
            f"are defined ({classes_from} has {n_classes} rows)"
        )
    return y


#: Spellings of a text classifier's orientation: ``"CD"`` = one row per class ``[C, D]``,
#: ``"DC"`` = one column per class ``[D, C]`` (the Tip-Adapter / APE file layout).
TEXT_LAYOUTS = ("CD", "DC")


def check_text_layout(layout: str, name: str = "layout") -> str:
    """``layout`` if it is one of :data:`TEXT_LAYOUTS`, else a one-line error."""
    if layout not in TEXT_LAYOUTS:
        raise ValueError(f"{name} must be one of {TEXT_LAYOUTS} (CD: one row per class, DC: one column "
                         f"per class), got {layout!r}")
    return layout


def check_text_features(text_features: ArrayLike, *, name: str = "text_features",
                        device: torch.device | None = None,
                        dtype: torch.dtype | None = None, layout: str = "CD") -> torch.Tensor:
    """The text classifier as a ``[C, D]`` tensor, the one rule every estimator and function
    applies: ``C, D >= 1``, every class vector finite and non-zero (a zero or NaN row would
    silently make every prediction the same class).

    ``layout="CD"`` (one row per class) or ``"DC"`` (one column per class, transposed here).
    A ``"CD"`` input whose columns have unit norm while its rows do not is a ``[D, C]``
    classifier given the wrong way round (the layout most repositories save): it is refused
    rather than read as ``D`` classes of width ``C``.
    """
    check_text_layout(layout)
    text = to_tensor(text_features, name, ndim=2, device=device, dtype=dtype, allow_nonfinite=True)
    if layout == "DC":
        text = text.T
    if text.shape[0] < 1 or text.shape[1] < 1:
        raise ValueError(f"{name} must be [C, D] with C, D >= 1, got shape {tuple(text.shape)}")
    if text.is_floating_point():
        bad = (~torch.isfinite(text)).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"{name} rows {_first(bad)} contain NaN or infinite values; every class "
                             "needs a finite text embedding (re-encode the class prompts)")
    zero = (text == 0).all(dim=1).nonzero().flatten().tolist()
    if zero:
        raise ValueError(f"{name} rows {_first(zero)} are all zero; every class needs a text "
                         "embedding (re-encode the class prompts)")
    if layout == "CD" and text.is_floating_point() and unit_norm_axis(text) == "columns":
        c, d = text.shape
        raise ValueError(f"{name} of shape {tuple(text.shape)} has unit-norm columns but not unit-norm rows: "
                         f"it is a [D, C] classifier ({c} x {d}, one column per class, as Tip-Adapter / APE "
                         f"save it), not {c} classes of width {d}; pass "
                         f"{option('its transpose (.T) or layout=' + repr('DC'), '--text-layout DC (or auto)')}")
    return text


def _first(items: list, limit: int = 10) -> str:
    return f"{items[:limit]}{' ...' if len(items) > limit else ''} ({len(items)} rows)"


def like_input(t: torch.Tensor, reference: ArrayLike) -> ArrayLike:
    """Return ``t`` as the same kind as ``reference``: numpy, or a tensor on its device."""
    if isinstance(reference, torch.Tensor):
        return t.to(reference.device)
    return t.detach().cpu().numpy()

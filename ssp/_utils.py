"""Small shared helpers: array conversion, devices, input validation, atomic file writes.

Every public estimator accepts numpy arrays or torch tensors and returns the kind it was given
(predictions, transforms and fitted array attributes; see :mod:`ssp.classifiers`). Internally
everything is a torch tensor on ``self.device_``.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import numpy as np

from ssp._checks import check_int, check_real  # noqa: F401  (re-exported: one home for both)
from ssp._lazy import torch

ArrayLike = Any  # np.ndarray | torch.Tensor


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> first CUDA device if available, else CPU; anything else as given."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but CUDA is not available on this machine; "
            "pass device='cpu' or device='auto'."
        )
    return device


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
    floating becomes float32 (half-precision caches are promoted: SVDs need float32 or better).
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        t = torch.as_tensor(np.asarray(x))
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtype is None and t.is_floating_point() and t.dtype != torch.float64:
        dtype = torch.float32
    t = t.to(device=device, dtype=dtype) if (dtype is not None or device is not None) else t
    if t.is_floating_point() and not allow_nonfinite and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values; clean the features first")
    return t


def check_labels(labels: ArrayLike, n_samples: int, n_classes: int | None = None,
                 *, name: str = "labels", device: torch.device | None = None,
                 samples_from: str = "", classes_from: str = "text_features") -> torch.Tensor:
    """Integer labels ``[N]`` in ``0..n_classes-1`` as an int64 tensor.

    ``samples_from`` / ``classes_from`` name where ``n_samples`` and ``n_classes`` come from, for
    the error messages (e.g. a features file and a values file).
    """
    y = to_tensor(labels, name, device=device, ndim=1)
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise ValueError(f"{name} must be integer class indices, got non-integral floats")
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


def check_text_features(text_features: ArrayLike, *, name: str = "text_features",
                        device: torch.device | None = None,
                        dtype: torch.dtype | None = None) -> torch.Tensor:
    """The text classifier ``[C, D]`` as a tensor, the one rule every estimator applies:
    ``C, D >= 1``, every row finite and non-zero (a zero or NaN row would silently make
    every prediction the same class)."""
    text = to_tensor(text_features, name, ndim=2, device=device, dtype=dtype, allow_nonfinite=True)
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
    return text


def _first(items: list, limit: int = 10) -> str:
    return f"{items[:limit]}{' ...' if len(items) > limit else ''} ({len(items)} rows)"


def like_input(t: torch.Tensor, reference: ArrayLike) -> ArrayLike:
    """Return ``t`` as the same kind as ``reference``: numpy, or a tensor on its device."""
    if isinstance(reference, torch.Tensor):
        return t.to(reference.device)
    return t.detach().cpu().numpy()


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside the ``ssp`` package, so the
    warning names the user's line however deep inside the library it was raised."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Unit L2 norm along ``dim`` (zero vectors stay zero)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def check_is_fitted(estimator: Any, attribute: str) -> None:
    """Raise sklearn's NotFittedError when ``attribute`` is missing."""
    from sklearn.exceptions import NotFittedError

    if not hasattr(estimator, attribute):
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet; call 'fit' first."
        )


def deprecated_alias(new: str, old: str) -> property:
    """A read-only property ``old`` that returns attribute ``new`` with a DeprecationWarning
    (pointing at the caller); for public names renamed to the project's one name per concept."""

    def get(self: Any) -> Any:
        cls = type(self).__name__
        warnings.warn(f"{cls}.{old} is deprecated; use {cls}.{new}", DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    return property(get, doc=f"Deprecated alias of ``{new}``.")


class _LogProgress:
    """A progress report for logs (standard error is not a terminal): one line every
    ``interval`` seconds and one at the end, instead of a bar's carriage-return updates."""

    def __init__(self, total: int, desc: str, unit: str, interval: float) -> None:
        import time

        self.total, self.desc, self.unit, self.interval = int(total), desc, unit, interval
        self.n, self._postfix = 0, ""
        self._clock = time.monotonic
        self._start = self._last = self._clock()

    def _line(self) -> None:
        elapsed = self._clock() - self._start
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"[ssp] {self.desc}: {self.n}/{self.total} {self.unit}{pct}, {elapsed:.0f} s{self._postfix}",
              file=sys.stderr, flush=True)
        self._last = self._clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.interval:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = "; " + " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.n:
            self._line()


def progress_bar(total: int, desc: str, unit: str, *, enabled: bool = True, leave: bool = True,
                 interval: float = 10.0) -> Any:
    """A tqdm bar on a terminal; a line every ``interval`` seconds in a log (standard error
    redirected), so long extractions show progress there without flooding it. ``enabled=False``:
    silent. The object has tqdm's ``update`` / ``set_postfix`` / ``close``."""
    if not enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave)
    return _LogProgress(total, desc, unit, interval)

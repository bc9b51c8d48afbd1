"""Parameter constraints of the estimators, the one validator that reads them, and the fit template.

Each estimator class declares the allowed values of its constructor parameters in one table (the
idea of scikit-learn's ``_parameter_constraints``, written here without its private modules)::

    class TipAdapter(...):
        _parameter_constraints = {
            "alpha": [Real()], "beta": [Real()],
            "routing": [Options(ROUTINGS)],
            "chunk_size": [Integer(1), None],
            ...
        }

A parameter passes when it satisfies any one of its constraints (``None`` allows ``None``);
otherwise :func:`validate_params` raises one uniform message, ``"<name> must be <allowed>, got
<value>"``, e.g. ``rank must be None, a positive integer or a float in (0, 1), got 1.5``.

:class:`ValidatedFit` is the fit template every estimator shares: reset the fitted state,
validate the parameters, fit; a failed fit leaves the estimator unfitted, never half-fitted.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

__all__ = ["Interval", "Integer", "Real", "Fraction", "Options", "Boolean", "Pair", "validate_params",
           "check_param", "describe", "ValidatedFit"]


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"


@dataclass(frozen=True)
class Interval:
    """Numbers of one ``kind`` between ``low`` and ``high`` (``None``: unbounded).

    ``kind``: ``"int"`` (Python or numpy integers), ``"real"`` (any finite real number, integers
    included) or ``"float"`` (finite non-integer reals only: ``1`` is not a fraction). Bools are
    never numbers here. ``closed``: which ends belong to it ("both", "left", "right", "neither").
    """

    kind: str
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if _is_bool(value) or not isinstance(value, numbers.Real):
            return False
        if self.kind == "int" and not isinstance(value, numbers.Integral):
            return False
        if self.kind == "float" and isinstance(value, numbers.Integral):
            return False
        v = float(value)
        if not math.isfinite(v):
            return False
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and (v < self.low or (v == self.low and not left)):
            return False
        return self.high is None or not (v > self.high or (v == self.high and not right))

    def describe(self) -> str:
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.kind == "int":
            if self.high is None and self.low is not None and left:
                return "a positive integer" if self.low == 1 else f"an integer >= {self.low:g}"
            noun = "an integer"
        else:
            noun = "a finite real number" if self.kind == "real" else "a float"
        if self.low is None and self.high is None:
            return noun
        if self.high is None:
            return f"{noun} {'>=' if left else '>'} {self.low:g}"
        if self.low is None:
            return f"{noun} {'<=' if right else '<'} {self.high:g}"
        return f"{noun} in {'[' if left else '('}{self.low:g}, {self.high:g}{']' if right else ')'}"


def Integer(low: int | None = 1, high: int | None = None) -> Interval:  # noqa: N802 (a constraint)
    """Integers in ``[low, high]`` (default: positive integers)."""
    return Interval("int", low, high)


def Real(low: float | None = None, high: float | None = None, closed: str = "both") -> Interval:  # noqa: N802
    """Finite real numbers (integers included) between ``low`` and ``high``."""
    return Interval("real", low, high, closed)


def Fraction(closed: str = "neither") -> Interval:  # noqa: N802
    """Floats in ``(0, 1)`` (``closed="right"``: ``(0, 1]``), e.g. a share of the spectral energy."""
    return Interval("float", 0.0, 1.0, closed)


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (strings: compared exactly)."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (str, type(None))) and value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values)


@dataclass(frozen=True)
class Boolean:
    """``True`` or ``False`` (numpy bools included)."""

    def accepts(self, value: Any) -> bool:
        return _is_bool(value)

    def describe(self) -> str:
        return "True or False"


@dataclass(frozen=True)
class Pair:
    """A sequence of exactly two values, each satisfying ``item``."""

    item: Interval
    meaning: str = ""

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            return False
        return all(self.item.accepts(v) for v in value)

    def describe(self) -> str:
        return f"a pair {self.meaning}{' ' if self.meaning else ''}of {self.item.describe().split(' ', 1)[1]}s"


Constraint = Any  # Interval | Options | Boolean | Pair | None


def describe(allowed: Sequence[Constraint]) -> str:
    """``"None, a positive integer or a float in (0, 1)"``: the allowed values in words."""
    words = ["None" if c is None else c.describe() for c in allowed]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def check_param(value: Any, name: str, allowed: Sequence[Constraint]) -> Any:
    """``value`` itself when it satisfies one of ``allowed``; else ``ValueError`` naming ``name``."""
    if any(value is None if c is None else c.accepts(value) for c in allowed):
        return value
    raise ValueError(f"{name} must be {describe(allowed)}, got {value!r}")


def validate_params(estimator: Any, constraints: Mapping[str, Sequence[Constraint]] | None = None) -> None:
    """Check every parameter of ``estimator`` against ``constraints`` (default: its class's
    ``_parameter_constraints``) and raise the first violation."""
    table = type(estimator)._parameter_constraints if constraints is None else constraints
    for name, allowed in table.items():
        check_param(getattr(estimator, name), name, allowed)


class ValidatedFit:
    """The fit template: :meth:`_validated_fit` resets the fitted state (every attribute ending
    in ``_``), validates the parameters (:func:`validate_params` on ``_parameter_constraints``,
    then :meth:`_check_params` for what a table cannot say), and runs the fit; on failure the
    estimator is left unfitted."""

    _parameter_constraints: Mapping[str, Sequence[Constraint]] = {}

    def _check_params(self) -> None:
        """Checks beyond the table (cross-parameter rules, devices); none by default."""

    def _validate_params(self) -> None:
        validate_params(self)
        self._check_params()

    def _reset_fitted(self) -> None:
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)

    def _validated_fit(self, fit: Callable[[], Any]) -> Any:
        self._reset_fitted()
        try:
            self._validate_params()
            fit()
        except BaseException:
            self._reset_fitted()
            raise
        return self

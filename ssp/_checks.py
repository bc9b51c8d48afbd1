"""Torch-free vocabularies and scalar checks shared by the library, the config and the CLI, and
how messages name a setting (:func:`option`: a Python argument, or a command-line flag inside
:func:`cli_messages`, which every command-line entry point enters: :func:`ssp.cli._args.with_cli_messages`).

Kept free of torch so ``ssp-fewshot --help`` and config validation import nothing heavy.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from typing import Any, Iterator

__all__ = ["ROUTINGS", "PRECISIONS", "VAL_POLICIES", "RANDOM_WEIGHTS", "is_random_weights",
           "check_int", "check_real", "option", "cli_messages"]

#: How an SSP projector's views enter a classifier's terms (see :mod:`ssp.methods.base`).
ROUTINGS = ("paper", "reference", "vision")
#: Backbone precisions (:func:`ssp.backbone.model.load_backbone`).
PRECISIONS = ("fp32", "fp16", "bf16")
#: Named validation-set policies of the few-shot protocol (an int per class is also accepted).
VAL_POLICIES = ("coop", "full")
#: SSP language-view scoring precisions (``SSPProjector.score_precision``, ``--score-precision``).
SCORE_PRECISIONS = ("auto", "float32", "bfloat16", "tfloat32")
#: The ``pretrained`` value that asks for a randomly initialised backbone.
RANDOM_WEIGHTS = "none"


def is_random_weights(pretrained: Any) -> bool:
    """True for ``None`` and ``"none"`` (any case, outer spaces ignored): random initialisation."""
    return pretrained is None or (isinstance(pretrained, str)
                                  and pretrained.strip().lower() == RANDOM_WEIGHTS)


def check_int(value: Any, name: str, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    """``value`` as a Python int ``>= minimum``.

    Python and numpy integers are accepted (``np.int64(2)``); bools, floats (even ``2.0``) and
    strings are rejected. ``None`` passes through when ``allow_none``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, numbers.Integral) and not _is_bool(value) and int(value) >= minimum:
        return int(value)
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")


def check_real(value: Any, name: str, *, minimum: float | None = None) -> float:
    """``value`` as a finite float (``>= minimum`` when given); bools and strings are rejected."""
    if isinstance(value, numbers.Real) and not _is_bool(value):
        out = float(value)
        if math.isfinite(out) and (minimum is None or out >= minimum):
            return out
    bound = "" if minimum is None else f" >= {minimum:g}"
    raise ValueError(f"{name} must be a finite real number{bound}, got {value!r}")


# ------------------------------------------------------------------ naming options in messages

_CLI = contextvars.ContextVar("ssp_cli_messages", default=False)


@contextlib.contextmanager
def cli_messages(active: bool = True) -> Iterator[None]:
    """Inside this block :func:`option` names command-line flags (``--quick-gelu on``) instead of
    Python arguments (``quick_gelu=True``)."""
    token = _CLI.set(active)
    try:
        yield
    finally:
        _CLI.reset(token)


def option(python: str, cli: str) -> str:
    """How a message names a setting: ``cli`` (e.g. ``"--quick-gelu on"``) inside
    :func:`cli_messages` (a command-line tool's ``main``), ``python`` (e.g. ``"quick_gelu=True"``)
    otherwise."""
    return cli if _CLI.get() else python


def _is_bool(value: Any) -> bool:
    # numpy.bool_ (named "bool" in numpy 2) without importing numpy
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and "bool" in type(value).__name__)

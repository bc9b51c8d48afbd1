"""What the command-line tools share: integer argument types and the one entry-point wrapper
every tool's ``main`` is made with (ssp-fewshot, ssp-reproduce, ssp-unmix, ssp-data)."""
from __future__ import annotations

import argparse
import functools
from typing import Callable

from ssp._checks import cli_messages


def int_at_least(minimum: int, note: str = ""):
    """An argparse type: an integer >= ``minimum`` (``note`` explains the smallest value)."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}{note}, got {value}")
        return value

    return parse


def fail(prog: str, err: BaseException, debug: bool) -> SystemExit:
    """The one-line exit for an error a user can fix (``--debug``: the traceback instead)."""
    if debug:
        raise err
    return SystemExit(f"{prog}: error: {err}\n(run with --debug for the full traceback)")


def with_cli_messages(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """The tool's ``main(argv)``, with messages naming command-line flags (``--quick-gelu on``), not
    Python arguments (:func:`ssp._checks.cli_messages`): the one place that decides it, for console
    scripts, ``python -m ssp.cli.<tool>`` and in-process calls alike."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        with cli_messages():
            return main(argv)

    return wrapped

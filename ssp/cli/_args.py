"""What the command-line tools share: integer argument types and their entry-point wrapper."""
from __future__ import annotations

import argparse
import functools
from typing import Callable


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


def with_cli_messages(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """The tool's ``main(argv)``, with messages naming command-line flags (``--quick-gelu on``), not
    Python arguments, also when called in-process (:func:`ssp._checks.cli_messages`)."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        from ssp._checks import cli_messages

        with cli_messages():
            return main(argv)

    return wrapped

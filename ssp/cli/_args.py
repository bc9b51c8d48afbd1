"""What the command-line tools share: integer argument types, the random-weights banner and the
one entry-point wrapper every tool's ``main`` is made with (ssp-fewshot, ssp-reproduce, ssp-unmix,
ssp-data)."""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
import warnings
from typing import Callable, Iterator

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


RANDOM_INIT_WARNING = "RANDOMLY INITIALISED"
_OPEN_CLIP_RANDOM = "No pretrained weights loaded"


class _DropOpenClipRandomNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _OPEN_CLIP_RANDOM not in record.getMessage()


@contextlib.contextmanager
def random_weights_banner(random: bool, *, what: str = "Accuracies", show: bool = True) -> Iterator[None]:
    """With random weights (``--pretrained none``), one loud banner on standard error when a
    backbone is actually loaded (so an error raised before that comes alone), at most once in the
    block, in place of ssp's per-load warning and open_clip's ``[root] WARNING`` that say the same.
    The process's warning filters and logging are restored after the block."""
    if not random:
        yield
        return
    shown = False
    with warnings.catch_warnings():
        previous = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            nonlocal shown
            if RANDOM_INIT_WARNING not in str(message):
                previous(message, category, filename, lineno, file, line)
            elif show and not shown:
                shown = True
                bar = "!" * 78
                print(f"{bar}\n  --pretrained none: RANDOMLY INITIALISED backbone. {what} below are MEANINGLESS;"
                      f"\n  use this only to smoke-test the pipeline.\n{bar}", file=sys.stderr)

        warnings.showwarning = showwarning
        warnings.filterwarnings("always", message=f".*{RANDOM_INIT_WARNING}.*")
        drop = _DropOpenClipRandomNotice()
        root = logging.getLogger()
        root.addFilter(drop)
        try:
            yield
        finally:
            root.removeFilter(drop)

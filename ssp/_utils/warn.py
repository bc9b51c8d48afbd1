"""Warnings attributed to the user's line, however deep inside the library they are raised."""
from __future__ import annotations

import os
import sys
import warnings


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside the ``ssp`` package, so the
    warning names the user's line however deep inside the library it was raised."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def one_line_warnings() -> None:
    """Show warnings as one line, ``warning: <message>``, without the file name and the source
    line Python prints by default (scripts such as the benchmarks, whose readers want the message)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"warning: {message}", file=file if file is not None else sys.stderr)

    warnings.showwarning = show

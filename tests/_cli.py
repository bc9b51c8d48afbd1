"""Running a command-line tool in-process (``main(argv)``), with the result shaped like a
finished subprocess (``returncode``, ``stdout``, ``stderr``), as a user's shell would see it."""
from __future__ import annotations

import contextlib
import importlib
import io
import subprocess
import sys


def run_cli(module: str, *args) -> subprocess.CompletedProcess:
    """``python -m module *args``, in this process: ``SystemExit("message")`` becomes exit code 1 with
    the message on stderr, as Python's own handler does."""
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv) or 0
        except SystemExit as exit_:
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
                code = 1
            else:
                code = exit_.code or 0
    return subprocess.CompletedProcess([module, *argv], code, out.getvalue(), err.getvalue())

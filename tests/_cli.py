"""The one in-process harness for the command-line tools: ``main(argv)`` called in this process,
the result shaped like a finished subprocess (``returncode``, ``stdout``, ``stderr``), as a user's
shell would see it. (A few smoke tests run real subprocesses; everything else goes through here.)"""
from __future__ import annotations

import contextlib
import importlib
import io
import sys
import types
from typing import NamedTuple


class CliResult(NamedTuple):
    """``returncode, stdout, stderr`` (also unpacks as a tuple)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(module: str | types.ModuleType, *args) -> CliResult:
    """``python -m module *args``, in this process (``module``: a name or the module itself):
    ``SystemExit("message")`` becomes exit code 1 with the message on stderr, as Python's own
    handler does."""
    main = (importlib.import_module(module) if isinstance(module, str) else module).main
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
    return CliResult(code, out.getvalue(), err.getvalue())


def run_ok(module: str | types.ModuleType, *args) -> str:
    """The standard output of a call that must succeed (exit code 0)."""
    done = run_cli(module, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def cli_error(module: str | types.ModuleType, *args) -> str:
    """The error of a call that must fail as a user-facing error: a non-zero exit, no traceback,
    at most two lines (the error and the ``--debug`` hint). Returns the message."""
    done = run_cli(module, *args)
    message = done.stderr.strip()
    assert done.returncode not in (0, None), done
    assert "Traceback" not in message and len(message.splitlines()) <= 2, message
    return message

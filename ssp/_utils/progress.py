"""Progress: a tqdm bar on a terminal, a periodic line in a log."""
from __future__ import annotations

import contextlib
import contextvars
import sys
from typing import Any, Iterator

# Whether long steps inside estimators (a search, a regularisation path) report progress: off for
# library calls, as in scikit-learn; the run loop turns it on for the command-line tools.
_SHOW_STEPS = contextvars.ContextVar("ssp_show_step_progress", default=False)


class LogProgress:
    """A progress report for logs (standard error is not a terminal): one line every
    ``interval`` seconds and one at the end, instead of a bar's carriage-return updates."""

    def __init__(self, total: int, desc: str, unit: str, interval: float, *, quiet_if_short: bool = False) -> None:
        import time

        self.total, self.desc, self.unit, self.interval = int(total), desc, unit, interval
        self.quiet_if_short, self.lines = quiet_if_short, 0
        self.n, self._postfix = 0, ""
        self._clock = time.monotonic
        self._start = self._last = self._clock()

    def _line(self) -> None:
        elapsed = self._clock() - self._start
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"[ssp] {self.desc}: {self.n}/{self.total} {self.unit}{pct}, {elapsed:.0f} s{self._postfix}",
              file=sys.stderr, flush=True)
        self._last = self._clock()
        self.lines += 1

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.interval:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = "; " + " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.n and not (self.quiet_if_short and not self.lines):
            self._line()


def progress_bar(total: int, desc: str, unit: str, *, enabled: bool = True, leave: bool = True,
                 interval: float = 10.0, quiet_if_short: bool = False) -> Any:
    """A tqdm bar on a terminal; a line every ``interval`` seconds in a log (standard error
    redirected), so long extractions show progress there without flooding it. ``enabled=False``:
    silent. The object has tqdm's ``update`` / ``set_postfix`` / ``close``."""
    if not enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave)
    return LogProgress(total, desc, unit, interval, quiet_if_short=quiet_if_short)


@contextlib.contextmanager
def step_progress(enabled: bool = True) -> Iterator[None]:
    """Inside the block, long steps inside estimators (ProKeR's search, the linear probe's C path)
    report progress through :func:`progress_bar` (see :func:`step_bar`)."""
    token = _SHOW_STEPS.set(bool(enabled))
    try:
        yield
    finally:
        _SHOW_STEPS.reset(token)


#: Seconds between two progress lines of a step in a log; a step shorter than this prints nothing.
STEP_INTERVAL = 10.0


def step_bar(total: int, desc: str, unit: str) -> Any:
    """A :func:`progress_bar` for a long step inside an estimator, shown only inside
    :func:`step_progress` (silent otherwise): a bar on a terminal (not left when done), in a log a
    line every :data:`STEP_INTERVAL` seconds and a closing one, nothing for a step shorter than that."""
    return progress_bar(total, desc, unit, enabled=_SHOW_STEPS.get(), leave=False, interval=STEP_INTERVAL,
                        quiet_if_short=True)

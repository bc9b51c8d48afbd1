"""Progress: a tqdm bar on a terminal, a periodic line in a log."""
from __future__ import annotations

import sys
from typing import Any


class LogProgress:
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
    return LogProgress(total, desc, unit, interval)

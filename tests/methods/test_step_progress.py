"""Long silent steps show progress (issue 27, item 8): ProKeR's search and the linear probe's C
path report through the run loop's progress (a line every few seconds in a log, a bar on a
terminal), and stay silent in library calls and for short steps."""
from __future__ import annotations

import numpy as np
import pytest

from ssp._utils import progress
from ssp.methods.linear_probe import LinearProbe
from ssp.methods.proker import ProKeR
from ssp.methods.search import validation_search


def _data(seed=0, c=4, k=4, d=8):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((c, d))
    y = np.repeat(np.arange(c), k)
    x = (means[y] + 0.5 * rng.standard_normal((len(y), d))).astype(np.float32)
    vy = np.repeat(np.arange(c), 3)
    vx = (means[vy] + 0.5 * rng.standard_normal((len(vy), d))).astype(np.float32)
    return x, y, vx, vy, means.astype(np.float32)


@pytest.mark.parametrize("make,desc,total", [
    (lambda: ProKeR(), "ProKeR search", 55),
    (lambda: LinearProbe(), "linear probe C path", None),
])
def test_long_steps_report_progress_only_when_asked(make, desc, total, capsys, monkeypatch):
    x, y, vx, vy, text = _data()
    model = make().fit(x, y, text_features=text)
    validation_search(model, vx, vy)                       # a library call: silent
    assert desc not in capsys.readouterr().err
    monkeypatch.setattr(progress, "STEP_INTERVAL", 1e9)     # a short step in a log: silent too
    with progress.step_progress():
        validation_search(make().fit(x, y, text_features=text), vx, vy)
    assert desc not in capsys.readouterr().err
    monkeypatch.setattr(progress, "STEP_INTERVAL", 0.0)     # a long one: lines, and a closing one
    with progress.step_progress():
        validation_search(make().fit(x, y, text_features=text), vx, vy)
    lines = [line for line in capsys.readouterr().err.splitlines() if desc in line]
    assert len(lines) >= 2 and lines[-1].startswith(f"[ssp] {desc}")
    done = lines[-1].split(": ", 1)[1].split(" ", 1)[0]
    n, of = map(int, done.split("/"))
    assert n == of and (total is None or of == total)

"""The README's runnable example must run as printed."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    text = README.read_text()
    match = re.search(r"<!-- readme-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its runnable example block"
    namespace: dict = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)
    search = namespace["search"]
    assert set(search.best_params_) == {"routing", "beta", "alpha", "gamma"}
    assert namespace["logits"].shape == (40, 10)
    assert namespace["predictions"].shape == (40,)


def test_ci_runs_the_readme_test_command():
    command = re.search(r"# 1\..*\n(.*)\n", README.read_text()).group(1).strip()
    ci = (README.parent / ".ci" / "run").read_text()
    assert command in ci

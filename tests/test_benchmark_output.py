"""The benchmarks print a warning as its message, not Python's ``file:line: UserWarning`` and the
source line that raised it (issue 27, item 11)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_one_line_warnings():
    code = ("from ssp._utils.warn import one_line_warnings\none_line_warnings()\nimport warnings\n"
            "warnings.warn('the search optimum lies on the grid edge')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0
    assert done.stderr == "warning: the search optimum lies on the grid edge\n"


@pytest.mark.parametrize("script", ["stanford_cars_real_features.py", "bench_finetuned.py",
                                    "bench_training_free.py"])
def test_the_benchmarks_print_one_line_warnings(script):
    text = (ROOT / "benchmarks" / script).read_text()
    main = text[text.index("def main("):]
    assert "one_line_warnings()" in main.split("\n\n\n")[0] or "one_line_warnings()" in main[:400]

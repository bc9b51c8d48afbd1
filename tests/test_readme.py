"""The README's runnable example must run as printed."""
from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_ci_runs_the_readme_test_command():
    command = re.search(r"# 1\..*\n(.*)\n", README.read_text()).group(1).strip()
    ci = (README.parent / ".ci" / "run").read_text()
    assert command in ci


def _generated_examples():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_examples", README.parent / "docs" / "readme_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readme_examples", module)  # dataclasses look their module up
    spec.loader.exec_module(sys.modules["readme_examples"])
    module = sys.modules["readme_examples"]
    return module, module.examples(README.read_text())


def test_example_outputs_come_from_their_commands():
    """Every example output block (rewritten from a real run by docs/readme_examples.py) is
    there, names no machine-local path, and a run's closing line names the folder its command
    writes to."""
    module, found = _generated_examples()
    assert {"demo", "cars", "verify"} <= {ex.name for ex in found}
    for ex in found:
        assert ex.output.strip(), f"example {ex.name!r} has no output: run docs/readme_examples.py --only {ex.name}"
        assert "…" not in ex.command, f"example {ex.name!r} elides flags"
        assert str(README.parent) not in ex.output
        for folder in re.findall(r"--output\s+(\S+)", ex.command):
            closing = [line for line in ex.output.splitlines() if re.match(r"\d+ runs under ", line)]
            for line in closing:
                assert line.split(" runs under ")[1].split(" (")[0].endswith(folder), (ex.name, line, folder)


def test_the_main_job_is_command_2():
    """The first example is the README's command 2 as written (output folders aside)."""
    _, found = _generated_examples()
    command2 = re.search(r"# 2\..*\n(.*)\n", README.read_text()).group(1).split("&& ", 1)[1].strip()
    demo = next(ex for ex in found if ex.name == "demo").command.strip()
    strip = lambda c: re.sub(r" --(output|feature-store) \S+", "", c)  # noqa: E731
    assert strip(demo) == strip(command2)

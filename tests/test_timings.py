"""The times README.md and docs/ state come from one command (benchmarks/timings.py) with the
machine beside them, and cannot drift from its stored figures (issue 27, item 8); the README's
GPU section says whether a GPU was measured (item 13)."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _timings():
    spec = importlib.util.spec_from_file_location("ssp_timings", ROOT / "benchmarks" / "timings.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ssp_timings", module)
    spec.loader.exec_module(module)
    return module


def test_every_timings_block_is_what_the_stored_figures_render():
    timings = _timings()
    figures = json.loads(timings.STORE.read_text())
    found = {}
    for page, text in timings.render_pages(figures).items():
        assert text == page.read_text(), f"{page.name}: run python3 benchmarks/timings.py --render"
        for m in timings.BLOCK.finditer(text):
            found.setdefault(m.group("name"), []).append(m.group("body"))
    assert set(found) == set(timings.RENDER)     # every measurement is shown, every block is known
    for name, bodies in found.items():
        for body in bodies:
            assert re.search(r"on .+ \(\d+ cores.*\), load average \d+\.\d before and \d+\.\d after", body), name
            assert "python3 benchmarks/timings.py" in body


def test_the_stored_figures_come_from_real_runs():
    figures = json.loads(_timings().STORE.read_text())
    for name in ("demo", "cars", "reliability"):
        run = figures[name]
        assert run["wall_s"] > 0 and run["cpu_s"] > 0 and run["machine"]["cores"] >= 1
        assert run["machine"]["cpu"] and len(run["load_before"]) == 3
    assert "ssp.cli.fewshot --dataset dtd" in figures["demo"]["command"]
    assert 16 in [r["shots"] for r in figures["cars"]["rows"]]
    blocks, whole = figures["reliability"]["rows"]
    assert (blocks["rows"], whole["rows"]) == ("blocks", "one block") and blocks["lac"] == whole["lac"]


def test_the_demo_command_is_readme_command_2():
    timings = _timings()
    command2 = re.search(r"# 2\..*\n(.*)\n", (ROOT / "README.md").read_text()).group(1).split("&& ", 1)[1]
    flags = command2.replace('"${SSP_DATA_ROOT:-../shared/data}/coop"', "DATA").split()[1:]
    measured = [("DATA" if a.endswith("/coop") else a) for a in timings.DEMO[2:]]
    assert [a for a in flags if a not in ("--output", "runs")] == [a for a in measured if a != "--no-progress"]


@pytest.mark.parametrize("stale", ["about two minutes", "about three minutes", "0.06 s (GDA)", "2.2 s (LP++",
                                   "20 s (ProKeR", "8.7 s (linear probe", "about 7 s on one CPU core",
                                   "| 13.5 | 299 |"])
def test_no_hand_written_time_of_issue_27_is_left(stale):
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        assert stale not in page.read_text(), (page.name, stale)


def test_machine_names_the_cpu_and_cores():
    m = _timings().machine()
    assert m["cpu"] and m["cores"] >= 1 and m["python"]


def test_the_gpu_section_says_whether_a_gpu_was_measured():
    text = (ROOT / "README.md").read_text()
    gpu = text[text.index("* **GPU**"):].split("\n## ", 1)[0]
    measured = re.search(r"\| (NVIDIA|AMD|Intel) [^|]+\|", gpu)
    assert measured or "no GPU was lent" in gpu

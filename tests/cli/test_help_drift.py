"""The tools' help and the docs say what ships (issue 27, item 9): every method, every --paper
preset, one description of --score-precision auto, no stale method count, and one spelling of
each method users can type (``lpp`` / ``lpp+ssp`` accepted wherever a method is named, item 11)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ssp.cli import fewshot, reproduce
from ssp.methods.registry import canonical_name, method_names, registered_methods
from ssp.run.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _wide_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100000")   # argparse wraps at hyphens otherwise


def _help(module, capsys) -> str:
    with pytest.raises(SystemExit):
        module.main(["--help"])
    return " ".join(capsys.readouterr().out.split())


def test_fewshot_help_names_every_method_and_its_alias(capsys):
    text = _help(fewshot, capsys)
    description = text.split("options:")[0]
    for spec in registered_methods():
        assert spec.title in description, spec.title
    for name in method_names():
        assert name in text, name
    assert "lp++ (or lpp)" in text and "lp+++ssp (or lpp+ssp)" in text


def test_score_precision_auto_is_described_as_the_readme_describes_it(capsys):
    text = _help(fewshot, capsys)
    flag = text.split("--score-precision {", 2)[2].split("--ssp-routing")[0]
    assert "keeps the fastest" in flag and "never an emulated screen" in flag
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert 'score_precision="auto"` times float32 and the screens the device runs natively' in readme
    assert "keeps the fastest" in readme


@pytest.mark.parametrize("page", ["README.md", "docs/protocol.md", "docs/method.md", "docs/baselines.md"])
def test_no_stale_method_count(page):
    text = (ROOT / page).read_text()
    assert not re.search(r"\b(two|three|four|five|six|seven|eight|nine|ten) methods\b", text), page


def test_one_spelling_users_can_type_everywhere(tmp_path):
    assert canonical_name("lpp") == "lp++" and canonical_name("LPP+SSP") == "lp+++ssp"
    cfg_file = tmp_path / "mine.yaml"
    cfg_file.write_text("methods: [lpp, lpp+ssp, tip]\nlpp: {epochs: 50}\n")
    cfg = load_config("dtd", cfg_file)
    assert cfg["methods"] == ["lp++", "lp+++ssp", "tip-adapter"] and cfg["lpp"]["epochs"] == 50
    args = fewshot.build_parser().parse_args(["--methods", "lpp+ssp", "zero-shot"])
    assert args.methods == ["lp+++ssp", "zero-shot"]
    args = reproduce.build_parser().parse_args(["--methods", "lpp"])
    assert args.methods == ["lp++"]


def test_an_unknown_method_names_the_choices():
    with pytest.raises(ValueError) as info:
        load_config("dtd", overrides={"methods": ["lp+"]})
    assert "unknown method(s) ['lp+']" in str(info.value) and "lp++ (or lpp)" in str(info.value)

"""ssp-reproduce on Tip-Adapter caches: which published backbone is compared is said (dry run,
comparison.md, comparison.png), a cache labelled with a backbone of another width is refused, and
the plot draws the dashed published line its legend promises (issue 27, item 10)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
from _cli import run_cli
from _tip_cache_folder import write_tip_cache

from ssp.cli import reproduce
from ssp.report.published import published_value

FAST = ["--shots", "1", "2", "--seeds", "1", "--methods", "zero-shot", "tip-adapter", "--no-progress",
        "--device", "cpu", "--paper", "tip-adapter", "--datasets", "dtd"]


@pytest.fixture()
def figures(monkeypatch):
    """The figures plot_comparison draws (kept instead of closed)."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    return kept


def _dashed(fig) -> int:
    return sum(1 for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == "--")


def test_unlabelled_cache_is_compared_with_nothing_and_says_so(tmp_path, capsys, figures):
    matplotlib.use("Agg")
    caches = write_tip_cache(tmp_path / "caches" / "dtd", dim=8).parent
    code, text, _ = run_cli(reproduce, "--features-root", caches, *FAST, "--dry-run")
    assert code == 0
    assert "published numbers (RN50) not compared: the cache's backbone is not labelled (8-d features)" in text
    assert "(published " not in text          # the dry run lists no number the report would not show
    code, text, _ = run_cli(reproduce, "--features-root", caches, *FAST, "--output", tmp_path / "out")
    assert code == 0
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "published: none compared (no published numbers for backbone cache-D8)" in md
    assert "cache-D8: no published numbers are compared" in md and "--backbones RN50" in md
    assert "`ours / -` = no published number" in md
    fig = figures[-1]
    assert _dashed(fig) == 0
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert not any("published" in t for t in legend)
    assert "no published numbers for this backbone" in fig._suptitle.get_text()


def test_labelled_cache_is_compared_and_the_plot_draws_the_dashed_line(tmp_path, capsys, figures):
    matplotlib.use("Agg")
    caches = write_tip_cache(tmp_path / "caches" / "dtd", dim=1024).parent
    code, text, _ = run_cli(reproduce, "--features-root", caches, *FAST, "--backbones", "RN50", "--dry-run")
    assert code == 0 and "compared with the published RN50 numbers" in text
    assert f"(published {published_value('tip-adapter', 'dtd', 2):.2f})" in text
    code, text, _ = run_cli(reproduce, "--features-root", caches, *FAST, "--backbones", "RN50", "--output",
                            tmp_path / "out")
    assert code == 0
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "compared: the published RN50 numbers" in md
    assert f"/ {published_value('tip-adapter', 'dtd', 2):.2f} (" in md   # the published cell is filled
    fig = figures[-1]
    assert _dashed(fig) >= 2        # zero-shot's and tip-adapter's published curves, in each panel
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "published RN50 (dashed)" in legend


def test_a_cache_labelled_with_a_backbone_of_another_width_is_refused(tmp_path, capsys):
    caches = write_tip_cache(tmp_path / "caches" / "dtd", dim=8).parent
    code, text, _ = run_cli(reproduce, "--features-root", caches, *FAST, "--backbones", "RN50", "--dry-run")
    assert code == 1
    assert "--backbones RN50: the cache folder" in text and "holds 8-d features, but RN50's are 1024-d" in text


def test_paper_help_lists_every_preset(capsys):
    from ssp.report.published import PAPER_PRESETS

    with pytest.raises(SystemExit):
        reproduce.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    described = help_text.split("--paper PAPER ", 1)[1].split("--datasets")[0]
    for name in PAPER_PRESETS:
        assert name in described, name


def test_a_reused_run_prints_what_the_fresh_run_printed(tmp_path, capsys):
    """One formatting of stored values (alpha=12.35 fresh, 12.36 reused, before), the same table
    with its settings line, and the closing line names --output as given."""
    from ssp.cli import fewshot

    cache = write_tip_cache(tmp_path / "caches" / "dtd", dim=8)
    argv = ["--features", cache, "--shots", "1", "2", "--seeds", "1", "--methods", "zero-shot", "tip-adapter",
            "lpp", "--no-progress", "--device", "cpu", "--output", tmp_path / "out"]
    outputs = []
    for _ in range(2):
        assert fewshot.main([str(a) for a in argv]) == 0
        outputs.append(capsys.readouterr().out)
    fresh, reused = ([line.split("  (done before")[0] for line in text.splitlines() if "-shot seed " in line]
                     for text in outputs)
    assert fresh and fresh == reused
    assert any("lp++" in line for line in fresh)           # the alias ran as the canonical method
    table = lambda text: text[text.index("dtd | cache-D8"):]  # noqa: E731
    assert table(outputs[0]) == table(outputs[1]) and "settings " in table(outputs[1])
    assert outputs[0].rstrip().endswith(f"runs under {tmp_path / 'out'} (results.md, results.png, summary.json)")

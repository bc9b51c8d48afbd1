"""results.png tells 14+ methods apart with a legend beside the data, and the report of a
randomly initialised backbone says so (issue 27, item 11)."""
from __future__ import annotations

import json

import matplotlib
import pytest

from ssp.methods.registry import method_names
from ssp.report.tables import RANDOM_WEIGHTS_LINE, format_table, method_styles, plot_summary, summarize, write_report

matplotlib.use("Agg")


def _record(method, shots, seed, acc, backbone="ViT-B-32@openai", source="pretrained"):
    return {"dataset": "dtd", "method": method, "shots": shots, "seed": seed,
            "backbone": {"name": backbone, "identity": {"weights": {"source": source}}},
            "protocol_key": "abc", "protocol_summary": "images", "test_accuracy": acc, "val_accuracy": acc}


def _records(methods, **kw):
    return [_record(m, k, 1, 10.0 + i + k, **kw) for i, m in enumerate(methods) for k in (1, 2, 4)]


@pytest.fixture()
def figures(monkeypatch):
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    return kept


def test_every_method_has_its_own_style_even_beyond_the_registry():
    methods = list(dict.fromkeys([*method_names(), "timo", "timo+ssp", "tpt", "tpt+ssp", "coop", "coop+ssp"]))
    assert len(methods) >= 20
    styles = method_styles(methods)
    keys = {(tuple(s["color"]), s["marker"], s["linestyle"]) for s in styles.values()}
    assert len(keys) == len(methods)
    # X+ssp: X's colour and marker, dashed
    assert styles["lp+++ssp"]["color"] == styles["lp++"]["color"] and styles["lp+++ssp"]["linestyle"] == "--"
    assert styles["lp++"]["color"] != styles["zero-shot"]["color"]


def test_results_png_legend_is_beside_the_data(tmp_path, figures):
    methods = list(method_names())  # 18 today
    plot_summary(summarize(_records(methods)), tmp_path / "results.png")
    fig = figures[-1]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert len(legend.get_texts()) == len(methods)
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), "the legend covers a panel"
    lines = {c.get_label(): c.lines[0] for ax in fig.axes for c in ax.containers}
    assert set(lines) == set(methods)
    drawn = {(tuple(matplotlib.colors.to_rgba(line.get_color())), line.get_marker(), line.get_linestyle())
             for line in lines.values()}
    assert len(drawn) == len(methods)


def test_random_weights_are_marked_in_results_md_png_and_summary(tmp_path, figures):
    from ssp.run.records import write_run

    for r in _records(["zero-shot", "ape"], backbone="ViT-B-32@none", source="random"):
        write_run(tmp_path, r)
    table, paths = write_report(tmp_path)
    assert RANDOM_WEIGHTS_LINE in table and RANDOM_WEIGHTS_LINE in paths["table"].read_text()
    assert json.loads(paths["summary"].read_text())["random_weights"] is True
    assert any("RANDOM WEIGHTS" in t.get_text() for t in figures[-1].texts)
    pretrained = format_table(summarize(_records(["zero-shot"])))
    assert "RANDOM" not in pretrained

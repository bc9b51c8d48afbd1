"""The protocol table (ssp.run.protocols): the CLI's choices, every protocol through the run loop,
base-to-new against dense references (synthetic caches, the real StanfordCars cache, real images)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _dtd_subset import dtd_subset
from _tip_cache_folder import write_tip_cache

from ssp.cli import fewshot
from ssp.report.tables import write_report
from ssp.run.config import load_config
from ssp.run.pipeline import plan_runs, run_fewshot
from ssp.run.protocols import DEFAULT_PROTOCOL, PROTOCOLS, base_new_split, get_protocol, harmonic_mean, protocol_names
from ssp.run.cache_source import TipCacheSource

ASSETS = Path(__file__).parents[1] / "assets"


def _runs(folder: Path) -> dict[str, dict]:
    return {r["method"]: r for r in (json.loads(p.read_text()) for p in sorted(folder.rglob("*.run.json")))}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cli_choices_are_the_table():
    parser = fewshot.build_parser()
    (action,) = [a for a in parser._actions if a.dest == "protocol"]
    assert tuple(action.choices) == protocol_names() and action.default == DEFAULT_PROTOCOL == "fewshot"
    assert "base2new" in PROTOCOLS
    with pytest.raises(ValueError, match="unknown protocol 'nope'; choose from"):
        get_protocol("nope")


def test_coop_subsample_classes_rule():
    assert base_new_split(196) == (98, 98) and base_new_split(101) == (51, 50) and base_new_split(2) == (1, 1)
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140) and harmonic_mean(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="at least 2 classes"):
        base_new_split(1)


@pytest.mark.parametrize("name", protocol_names())
def test_every_protocol_runs_on_a_cache_and_records_its_metrics(name, tmp_path):
    folder = write_tip_cache(tmp_path / "dtd", shots=(2,), n_val=4, n_test=3)
    spec = get_protocol(name)
    cfg = spec.configure(load_config("dtd", overrides={"shots": [2], "seeds": [1], "methods": ["zero-shot", "gda"]}),
                         methods_given=True)
    methods, _ = spec.runnable(cfg["methods"])     # test-time: zero-shot only (GDA needs shots)
    records = run_fewshot(cfg, TipCacheSource(cfg, folder=folder, device="cpu"), output_dir=tmp_path / "out",
                          echo=lambda _: None, progress=False, protocol=name)
    table, _ = write_report(tmp_path / "out")
    assert len(records) == len(methods) >= 1 and table
    for record in records:
        assert record.get("protocol_name", DEFAULT_PROTOCOL) == name
        assert all(isinstance(record[m], float) for m in spec.table_metrics)
    if name != DEFAULT_PROTOCOL:  # a protocol's runs get their own settings key
        fewshot_stub = plan_runs(cfg, TipCacheSource(cfg, folder=folder), [methods[-1]])
        assert records[-1]["settings_key"] != next(iter(fewshot_stub.values()))["settings_key"]


def test_fewshot_settings_keys_are_unchanged_by_the_protocol_table(tmp_path):
    """The default protocol adds nothing to the settings: results of earlier versions are reused."""
    folder = write_tip_cache(tmp_path / "dtd")
    cfg = load_config("dtd", overrides={"shots": [1], "seeds": [1], "methods": ["zero-shot"]})
    source = TipCacheSource(cfg, folder=folder)
    (stub,) = plan_runs(cfg, source, ["zero-shot"]).values()
    assert "evaluation" not in stub["settings"]["protocol"]
    (b2n,) = plan_runs(cfg, source, ["zero-shot"], "base2new").values()
    assert b2n["settings"]["protocol"]["evaluation"]["name"] == "base2new"


def test_base2new_through_the_cli_matches_dense_numpy(tmp_path, capsys):
    folder = write_tip_cache(tmp_path / "dtd", shots=(2,), n_val=4, n_test=3, seed=3)
    out = tmp_path / "out"
    code = fewshot.main(["--features", str(folder), "--protocol", "base2new", "--shots", "2", "--seeds", "1",
                         "--methods", "zero-shot", "tip-adapter", "gda", "linear-probe", "--device", "cpu",
                         "--no-progress", "--output", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "base2new, 2-shot" in text and "harmonic mean" in text
    runs = _runs(out)
    assert set(runs) == {"zero-shot", "tip-adapter", "gda", "linear-probe"}
    x = _unit(torch.load(folder / "test_f.pt").double().numpy())
    y = torch.load(folder / "test_l.pt").numpy()
    w = _unit(torch.load(folder / "text_weights.pt", map_location="cpu").T.double().numpy())
    n_base = math.ceil(47 / 2)
    base, new = y < n_base, y >= n_base
    zs_base = 100 * np.mean((x[base] @ w[:n_base].T).argmax(1) == y[base])
    zs_new = 100 * np.mean((x[new] @ w[n_base:].T).argmax(1) == y[new] - n_base)
    zs = runs["zero-shot"]
    assert zs["base_accuracy"] == round(zs_base, 6) and zs["new_accuracy"] == round(zs_new, 6)
    assert zs["harmonic_mean"] == round(harmonic_mean(zs_base, zs_new), 6)
    assert zs["class_split"]["base"] == [0, 24] and zs["class_split"]["new"] == [24, 47]
    # the new classes' reliability: the base validation's temperature, computed like this dense NLL
    z = 100 * x[new] @ w[n_base:].T
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    nll = -logp[np.arange(int(new.sum())), y[new] - n_base].mean()
    assert zs["reliability_new"]["raw"]["nll"] == pytest.approx(nll, rel=1e-6)
    assert zs["reliability_new"]["temperature"] == zs["reliability"]["temperature"]
    assert zs["reliability"]["n_test"] == int(base.sum()) and "conformal" not in zs["reliability_new"]
    assert zs["class_split"]["n_test_base"] == int(base.sum()) and zs["class_split"]["n_support"] == 2 * n_base
    for method, record in runs.items():
        assert record["protocol_name"] == "base2new" and record["new_classes"]["rule"]
        assert record["test_accuracy"] == record["base_accuracy"]
        if method != "gda":  # no transfer of their own: the zero-shot ranking of the new classes
            assert record["new_accuracy"] == zs["new_accuracy"], method
    assert runs["gda"]["new_classes"]["rule"].startswith("GDA transfer")
    assert runs["gda"]["new_class_details"]["neighbours"] == 2 * n_base  # fewer samples than 64
    # resume: the same command reuses every run
    assert fewshot.main(["--features", str(folder), "--protocol", "base2new", "--shots", "2", "--seeds", "1",
                         "--methods", "zero-shot", "--device", "cpu", "--no-progress", "--output", str(out)]) == 0
    assert "already done" in capsys.readouterr().out


def test_base2new_on_the_real_stanford_cars_cache(tip_cache_root, tmp_path):
    """Done-when of issue 24 on the real cache (zero-shot and GDA only: seconds)."""
    folder = tip_cache_root / "stanford_cars"
    out = tmp_path / "out"
    assert fewshot.main(["--features", str(folder), "--test-from-val", "0.5", "--protocol", "base2new",
                         "--shots", "16", "--seeds", "1", "--methods", "zero-shot", "gda", "--device", "cpu",
                         "--no-progress", "--output", str(out)]) == 0
    runs = _runs(out)
    zs, gda = runs["zero-shot"], runs["gda"]
    # plain numpy zero-shot over the new classes only, on the same seeded test part
    from ssp.run.sources import split_validation

    val_x = torch.load(folder / "val_f.pt", map_location="cpu").double().numpy()
    val_y = torch.load(folder / "val_l.pt", map_location="cpu")
    _, test_idx = split_validation(val_y, 0.5, 1)
    x, y = _unit(val_x[test_idx.numpy()]), val_y.numpy()[test_idx.numpy()]
    w = _unit(torch.load(folder / "text_weights.pt", map_location="cpu").T.double().numpy())
    new = y >= 98
    zs_new = 100 * np.mean((x[new] @ w[98:].T).argmax(1) == y[new] - 98)
    assert zs["new_accuracy"] == round(zs_new, 6)
    assert zs["class_split"]["n_classes"] == 196 and zs["class_split"]["new"] == [98, 196]
    assert gda["harmonic_mean"] > zs["harmonic_mean"]


@pytest.mark.slow
def test_base2new_from_images_with_ssp(data_root, tmp_path, capsys):
    """Images through a tiny random backbone: +ssp runs, the vision projector carries over."""
    split = dtd_subset(data_root, tmp_path, classes=4, train=2, val=2, test=3)
    out = tmp_path / "out"
    assert fewshot.main(["--dataset", "dtd", "--root", str(data_root / "coop"), "--split-file", str(split),
                         "--protocol", "base2new", "--shots", "2", "--seeds", "1",
                         "--methods", "zero-shot", "zero-shot+ssp", "gda+ssp",
                         "--backbone", str(ASSETS / "tiny-rn.json"), "--pretrained", "none", "--device", "cpu",
                         "--views", "2", "--output", str(out), "--feature-store", str(tmp_path / "store"),
                         "--no-progress"]) == 0
    capsys.readouterr()
    runs = _runs(out)
    assert set(runs) == {"zero-shot", "zero-shot+ssp", "gda+ssp"}
    for record in runs.values():
        assert record["class_split"]["base"] == [0, 2] and record["class_split"]["n_test_new"] == 6
        assert 0 <= record["new_accuracy"] <= 100
        # only the base classes' shots and validation images were drawn and encoded
        assert record["protocol"]["support_of_first_classes"] == 2
        assert record["protocol"]["n_support"] == 2 * 2 and record["protocol"]["n_val"] == 2 * 2
    assert runs["zero-shot+ssp"]["new_classes"]["ssp"] is True
    assert "vision projector" in runs["gda+ssp"]["new_classes"]["rule"]


def test_every_method_declares_and_documents_its_new_class_rule():
    """The base-to-new table of docs/protocol.md names every registered method; each estimator
    class declares its rule (recorded in run JSONs)."""
    from ssp.methods.registry import registered_methods

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    table = doc[doc.index("| method | classes without shots |"):]
    table = table[:table.index("\n\n")]
    for spec in registered_methods():
        assert isinstance(spec.estimator.new_class_rule, str) and len(spec.estimator.new_class_rule) > 20
        assert f"`{spec.name}`" in table, spec.name
    assert "`X+ssp`" in table and "vision projector carries over" in table

"""Split manifests: exact support / validation lists, back to the same FewShotSplits, refusals."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest

from ssp.data import DatasetSplits, Sample, get_dataset, make_fewshot_splits
from ssp.data.manifest import (
    MANIFEST_FORMAT,
    ManifestError,
    draw_manifest,
    load_manifest,
    run_manifest,
    splits_from_manifest,
)


def _toy(root: Path, counts=(5, 3, 4), val: bool = True, name: str = "toy") -> DatasetSplits:
    names = [f"class {c}" for c in range(len(counts))]

    def make(split, per_class):
        return [Sample(str(root / split / f"c{c}" / f"{i:03d}.jpg"), c, names[c])
                for c, n in enumerate(per_class) for i in range(n)]

    return DatasetSplits(name=name, root=root, classnames=names, templates=["a photo of a {}."],
                         train=make("train", counts), val=make("val", (3, 3, 3)) if val else None,
                         test=make("test", (2, 2, 2)))


@pytest.mark.parametrize("policy", ["coop", "full", 2])
@pytest.mark.parametrize("has_val", [True, False])
def test_manifest_round_trip_gives_the_same_splits(tmp_path, policy, has_val):
    ds = _toy(tmp_path, val=has_val)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "full" without a val split warns
        manifest = draw_manifest(ds, [1, 4], [1, 2], val_policy=policy)
        for shots in (1, 4):
            for seed in (1, 2):
                ref = make_fewshot_splits(ds, shots, seed, val_policy=policy)
                got = splits_from_manifest(manifest, ds, shots, seed)
                assert got.support == ref.support and got.val == ref.val and got.test == ref.test
                assert got.val_policy == policy
    draw = manifest["draws"][0]
    assert manifest["format"] == MANIFEST_FORMAT and (draw["shots"], draw["seed"]) == (1, 1)
    assert draw["support"][0][0].startswith("train/c0/") and draw["support"][0][1] == 0
    assert (draw["val"] is None) == (policy == "full")


def test_a_manifest_survives_moving_the_dataset(tmp_path):
    """Paths are relative to the dataset folder: another machine, another root, same draw."""
    m = draw_manifest(_toy(tmp_path / "a"), [2], [3])
    moved = _toy(tmp_path / "elsewhere")
    got = splits_from_manifest(m, moved, 2, 3)
    assert got.support == make_fewshot_splits(moved, 2, 3).support


def test_refusals_name_the_reason(tmp_path):
    ds = _toy(tmp_path)
    m = draw_manifest(ds, [2], [1])
    with pytest.raises(ManifestError, match="for dataset 'toy', not 'other'"):
        splits_from_manifest(m, _toy(tmp_path, name="other"), 2, 1)
    with pytest.raises(ManifestError, match="4 classes in the manifest, 3 in"):
        bad = copy.deepcopy(m)
        bad["classnames"].append("class 3")
        splits_from_manifest(bad, ds, 2, 1)
    with pytest.raises(ManifestError, match="holds no draw for 4-shot seed 1 .*2-shot seed 1"):
        splits_from_manifest(m, ds, 4, 1)
    smaller = _toy(tmp_path, counts=(5, 3, 0))  # the manifest's class-2 images are not in this train split
    first_c2 = next(e[0] for e in m["draws"][0]["support"] if e[1] == 2)
    with pytest.raises(ManifestError, match=f"train image '{first_c2}' is not in the train pool"):
        splits_from_manifest(m, smaller, 2, 1)


def test_edited_lists_and_wrong_labels_are_refused(tmp_path):
    ds = _toy(tmp_path)
    path = tmp_path / "m.json"
    m = draw_manifest(ds, [2], [1])
    edited = copy.deepcopy(m)
    edited["draws"][0]["support"][0][1] = 1
    path.write_text(json.dumps(edited))
    with pytest.raises(ManifestError, match="does not match its support_sha256"):
        load_manifest(path)
    from ssp.data.manifest import _sha256

    edited["draws"][0]["support_sha256"] = _sha256(edited["draws"][0]["support"])  # a consistent but wrong edit
    with pytest.raises(ManifestError, match="has label 1 in the manifest, 0 in toy"):
        splits_from_manifest(edited, ds, 2, 1)
    short = copy.deepcopy(m)
    short["draws"][0]["support"] = short["draws"][0]["support"][1:]
    short["draws"][0]["support_sha256"] = _sha256(short["draws"][0]["support"])
    with pytest.raises(ManifestError, match="1 support image.*for class 0.*exactly 2"):
        splits_from_manifest(short, ds, 2, 1)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ManifestError, match="not a split manifest"):
        load_manifest(path)


def test_a_run_json_carries_a_usable_manifest(tmp_path):
    ds = _toy(tmp_path)
    fs = make_fewshot_splits(ds, 2, 5)
    run = {"dataset": "toy", "split_manifest": run_manifest(fs, split_file_sha256="abc")}
    (tmp_path / "x.run.json").write_text(json.dumps(run))
    m = load_manifest(tmp_path / "x.run.json")
    assert m["split_file_sha256"] == "abc" and len(m["draws"]) == 1
    assert splits_from_manifest(m, ds, 2, 5).support == fs.support


def test_real_dtd_manifest_matches_the_sampler(data_root):
    ds = get_dataset("dtd", data_root / "coop", check_files=False)
    m = draw_manifest(ds, [1, 16], [1, 2, 3])
    assert len(m["draws"]) == 6 and all(len(d["support"]) == k * 10 for d, k in
                                        zip(m["draws"], (1, 1, 1, 16, 16, 16)))
    assert m["draws"][0]["support"][0][0].startswith("images/banded/")
    again = draw_manifest(ds, [1, 16], [1, 2, 3])
    assert again["sha256"] == m["sha256"]  # deterministic
    assert splits_from_manifest(m, ds, 16, 3).support == make_fewshot_splits(ds, 16, 3).support


def test_run_helpers_check_every_draw_and_the_validation_policy(tmp_path):
    from ssp.data.manifest import check_run_manifest, fewshot_splits

    ds = _toy(tmp_path)
    m = draw_manifest(ds, [1, 2], [1])
    assert fewshot_splits(ds, 2, 1, manifest=m).support == make_fewshot_splits(ds, 2, 1).support
    assert fewshot_splits(ds, 2, 7).support == make_fewshot_splits(ds, 2, 7).support  # no manifest: the sampler
    check_run_manifest(m, ds, [1, 2], [1])
    with pytest.raises(ManifestError, match="no draw for 1-shot seed 2"):
        check_run_manifest(m, ds, [1, 2], [1, 2])
    with pytest.raises(ManifestError, match="val_policy 'coop', the run 'full'; run with --val-policy coop"):
        check_run_manifest(m, ds, [1], [1], val_policy="full")

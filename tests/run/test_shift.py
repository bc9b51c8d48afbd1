"""Distribution shift: the ImageNet variants as datasets (class lists shipped, verify) and
``ssp-fewshot --eval-on`` on an ImageNet-R-like class subset of the shared ImageNet-layout images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssp.cli import fewshot
from ssp.data import get_dataset
from ssp.data.benchmarks import IMAGENET_VARIANTS, shipped_class_ids
from ssp.data.verify import verify_dataset

ASSETS = Path(__file__).parents[1] / "assets"


def test_shipped_class_lists_name_their_source_and_are_imagenet_subsets():
    all_ids = shipped_class_ids("imagenet_v2")
    assert len(all_ids) == 1000 and all_ids == sorted(all_ids) == shipped_class_ids("imagenet_sketch")
    for name in ("imagenet_a", "imagenet_r"):
        ids = shipped_class_ids(name)
        assert len(ids) == len(set(ids)) == 200 and set(ids) <= set(all_ids)
    from ssp.data.benchmarks import CLASS_SUBSETS

    for file, _, _ in IMAGENET_VARIANTS.values():
        head = (CLASS_SUBSETS / file).read_text().splitlines()[:3]
        assert any(line.startswith("# source: https://github.com/hendrycks/") and " @ " in line for line in head)
    assert shipped_class_ids("imagenet_a") != shipped_class_ids("imagenet_r")


def _variant(folder: Path, ids: list[str], per_class: int = 1) -> Path:
    for wnid in ids:
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / wnid / f"{i}.jpg").write_bytes(b"")
    return folder


def test_verify_names_the_missing_class_folder_and_the_wrong_image_count(tmp_path, capsys):
    from ssp.cli import data as data_cli

    ids = shipped_class_ids("imagenet_a")
    _variant(tmp_path / "imagenet-a", ids[:57] + ids[58:])
    report = verify_dataset("imagenet_a", tmp_path)
    assert report.status == "missing" and ids[57] in report.problem
    first = tmp_path / "first"  # the first class folder missing too: still named
    _variant(first / "imagenet-a", ids[1:])
    report = verify_dataset("imagenet_a", first)
    assert report.status == "missing" and ids[0] in report.problem
    _variant(tmp_path / "imagenet-a", [ids[57]])
    report = verify_dataset("imagenet_a", tmp_path)
    assert report.status == "missing" and "200 images" in report.problem and "7,500" in report.problem
    assert data_cli.main(["verify", "imagenet_a", "--root", str(tmp_path)]) != 0
    assert "7,500" in capsys.readouterr().out
    ds = get_dataset("imagenet_a", tmp_path)
    assert ds.class_ids == ids and ds.train == [] and len(ds.test) == 200


def test_imagenet_v2_class_folders_are_class_indices(tmp_path):
    all_ids = shipped_class_ids("imagenet_v2")
    folder = tmp_path / "imagenetv2-matched-frequency-format-val"
    for i in range(1000):
        (folder / str(i)).mkdir(parents=True)
        (folder / str(i) / "a.jpeg").write_bytes(b"")
    ds = get_dataset("imagenet_v2", tmp_path)
    assert ds.class_ids == all_ids and ds.test[5].label == 5 and ds.test[5].path.endswith("/5/a.jpeg")


@pytest.fixture()
def shift_data(data_root, tmp_path):
    """Source: 12 classes of the shared ImageNet-layout images; target (ImageNet-R-like): 5 of them,
    its own classnames.txt, the source's validation images of those classes."""
    root = data_root / "imagenet_tiny"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    pairs = [line.split(maxsplit=1) for line in (root / "classnames.txt").read_text().splitlines() if line.strip()]
    source = tmp_path / "imagenet"
    (source / "images").mkdir(parents=True)
    for split in ("train", "val"):
        (source / "images" / split).mkdir()
        for wnid, _ in pairs[:12]:
            (source / "images" / split / wnid).symlink_to(root / "images" / split / wnid)
    (source / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in pairs[:12]))
    subset = [pairs[i] for i in (1, 4, 6, 9, 11)]
    target = tmp_path / "imagenet-r"
    target.mkdir()
    for wnid, _ in subset:
        (target / wnid).symlink_to(root / "images" / "val" / wnid)
    (target / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in reversed(subset)))  # own order
    return source, target, [w for w, _ in pairs[:12]], [w for w, _ in reversed(subset)]


def test_eval_on_restricts_the_logits_to_the_target_classes(shift_data, tmp_path, capsys):
    source, target, source_ids, target_ids = shift_data
    out = tmp_path / "out"
    store = tmp_path / "store"
    assert fewshot.main(["--dataset", "imagenet", "--root", str(source), "--eval-on", f"imagenet_r={target}",
                         "--shots", "1", "--seeds", "1", "--methods", "zero-shot", "tip-adapter",
                         "--backbone", str(ASSETS / "tiny-vit.json"), "--pretrained", "none", "--device", "cpu",
                         "--views", "1", "--output", str(out), "--feature-store", str(store), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "distribution shift" in text and "imagenet_r" in text
    runs = {r["method"]: r for r in (json.loads(p.read_text()) for p in out.rglob("*.run.json"))}
    zs = runs["zero-shot"]
    assert zs["eval_on"]["imagenet_r"]["n_classes"] == 5 and zs["eval_on"]["imagenet_r"]["n_test"] == 5 * 25
    assert zs["imagenet_r_accuracy"] == zs["eval_on"]["imagenet_r"]["accuracy"]

    # dense reference from the stored features: zero-shot logits over the 12 source classes,
    # restricted to the target's 5 (in the target's own label order, mapped by wnid)
    from safetensors.torch import load_file

    (text_file,) = (store / "text_classifier").glob("*.safetensors")
    (target_file,) = (store / "features" / "imagenet_r").glob("*.safetensors")
    text_w = load_file(text_file)["text"].double().numpy()
    target_feats = load_file(target_file)
    x = target_feats["global"].double().numpy()
    y = target_feats["labels"].numpy()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = text_w / np.linalg.norm(text_w, axis=1, keepdims=True)
    logits = x @ w.T
    index = [source_ids.index(c) for c in target_ids]
    restricted = 100 * np.mean(logits[:, index].argmax(1) == y)
    assert zs["imagenet_r_accuracy"] == pytest.approx(restricted, abs=1e-9)
    # a query can only be predicted as a target class: unrestricted predictions reach other classes
    unrestricted = logits.argmax(1)
    assert not set(unrestricted.tolist()) <= set(index)
    assert 100 * np.mean(np.array(index)[y] == unrestricted) != restricted or restricted == 100.0


def test_eval_on_errors_are_one_line(shift_data, tmp_path, capsys):
    source, target, _, _ = shift_data
    (target / "classnames.txt").write_text("n99999999 not an imagenet class\n")
    (target / "n99999999").mkdir()
    (target / "n99999999" / "a.jpg").write_bytes(b"")
    base = ["--dataset", "imagenet", "--root", str(source), "--shots", "1", "--seeds", "1", "--methods", "zero-shot",
            "--backbone", str(ASSETS / "tiny-vit.json"), "--pretrained", "none", "--device", "cpu",
            "--output", str(tmp_path / "out"), "--no-progress"]
    with pytest.raises(SystemExit) as err:
        fewshot.main(base + ["--eval-on", f"imagenet_r={target}"])
    assert "not classes of imagenet" in str(err.value.code) and "n99999999" in str(err.value.code)
    with pytest.raises(SystemExit) as err:
        fewshot.main(base + ["--eval-on", "imagenet_r", "--protocol", "base2new"])
    assert "does not combine" in str(err.value.code)

"""Issue 27 item 6: --skip-bad-images on a one-shot class draws a replacement shot of the same class
from the train split (seeded, in the log, the run JSON and its split manifest); refused only when the
class has no readable training image left; a missing file is a bad image too."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from _cli import run_cli
from _dtd_subset import dtd_subset

ASSETS = Path(__file__).parents[1] / "assets"


def _copy(data_root: Path, split: Path, root: Path) -> Path:
    for part in json.loads(split.read_text()).values():
        for rel, _, _ in part:
            (root / "dtd/images" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data_root / "coop/dtd/images" / rel, root / "dtd/images" / rel)
    return root


def _drawn_shot(root: Path, split: Path, label: int) -> Path:
    from ssp.data import get_dataset, make_fewshot_splits

    ds = get_dataset("dtd", root, split_file=split, check_files=False)
    return Path(next(s.path for s in make_fewshot_splits(ds, 1, 1).support if s.label == label))


def _fewshot(root: Path, split: Path, out: Path, *extra):
    return run_cli("ssp.cli.fewshot", "--dataset", "dtd", "--root", root, "--split-file", split, "--shots", "1",
                   "--seeds", "1", "--methods", "zero-shot", "tip-adapter", "--backbone", ASSETS / "tiny-rn.json",
                   "--pretrained", "none", "--device", "cpu", "--views", "1", "--no-progress",
                   "--output", out / "out", "--feature-store", out / "store", *extra)


def test_an_unreadable_or_missing_one_shot_is_replaced_from_the_train_split(data_root, tmp_path):
    split = dtd_subset(data_root, tmp_path, classes=3, train=3, val=1, test=1)
    root = _copy(data_root, split, tmp_path / "data")
    corrupt, missing = _drawn_shot(root, split, 0), _drawn_shot(root, split, 1)
    corrupt.write_bytes(b"not a jpeg" * 20)
    missing.unlink()

    refused = _fewshot(root, split, tmp_path / "plain")  # without the flag: the missing file stops it
    assert refused.returncode == 1 and str(missing.name) in refused.stderr

    done = _fewshot(root, split, tmp_path / "skip", "--skip-bad-images")
    assert done.returncode == 0, done.stderr
    assert f"unreadable shot {corrupt} replaced by" in done.stdout
    assert f"unreadable shot {missing} replaced by" in done.stdout
    for path in (tmp_path / "skip/out").rglob("*.run.json"):
        record = json.loads(path.read_text())
        replaced = {r["replaced"]: r for r in record["replaced_shots"]}
        assert set(replaced) == {str(corrupt), str(missing)}
        assert replaced[str(corrupt)]["class"] == 0 and replaced[str(missing)]["class"] == 1
        assert record["skipped_images"]["support"] == [str(corrupt), str(missing)]
        assert record["protocol"]["n_support"] == 3  # one shot per class, as asked
        draw = record["split_manifest"]["draws"][0]
        support = [rel for rel, _ in draw["support"]]
        new = [Path(replaced[str(p)]["by"]).relative_to(root / "dtd").as_posix() for p in (corrupt, missing)]
        assert new[0] in support and new[1] in support
        assert {r["replaced"] for r in draw["replaced_shots"]} == {
            p.relative_to(root / "dtd").as_posix() for p in (corrupt, missing)}
        by = Path(replaced[str(corrupt)]["by"])
        assert by.parent == corrupt.parent and by != corrupt  # a train image of the same class
    # seeded: the same replacement on a second run
    again = _fewshot(root, split, tmp_path / "skip2", "--skip-bad-images")
    assert again.returncode == 0 and [line for line in again.stdout.splitlines() if "replaced by" in line] == \
        [line for line in done.stdout.splitlines() if "replaced by" in line]


def test_a_class_without_any_readable_training_image_is_refused(data_root, tmp_path):
    split = dtd_subset(data_root, tmp_path, classes=3, train=2, val=1, test=1)
    root = _copy(data_root, split, tmp_path / "data")
    for rel, label, _ in json.loads(split.read_text())["train"]:
        if label == 2:
            (root / "dtd/images" / rel).write_bytes(b"broken")
    done = _fewshot(root, split, tmp_path / "run", "--skip-bad-images")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "class 2" in done.stderr and "has no readable training image left" in done.stderr
    assert not list((tmp_path / "run/out").rglob("*.run.json"))

"""ssp.data.verify: found / absent / missing / corrupt, counts, the official-split comparison."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _local_http import DTD_CLASSES, fake_dtd, linked_copy, write_tree

from ssp.data import DatasetNotFoundError
from ssp.data.verify import check_dataset, verify_dataset, verify_root


def _dtd(tmp_path: Path) -> Path:
    """A small DTD folder (3 classes, 2/1/1 images each) laid out as the archive + split file."""
    import io
    import tarfile

    archive, split = fake_dtd()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        tf.extractall(tmp_path, filter="data")
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_bytes(split)
    return tmp_path / "dtd"


def test_real_subsets_pass_and_are_reported_as_subsets_of_the_official_split(data_root):
    reports = {r.name: r for r in verify_root(data_root / "coop", images="header")}
    assert set(reports) >= {"dtd", "oxford_pets"}
    dtd, pets = reports["dtd"], reports["oxford_pets"]
    assert dtd.ok and pets.ok, (dtd.line(), pets.line())
    assert (dtd.n_classes, dtd.counts) == (10, {"train": 600, "val": 240, "test": 360})
    assert (pets.n_classes, pets.counts) == (3, {"train": 240, "val": 60, "test": 298})
    for r, total in ((dtd, 47), (pets, 37)):
        assert r.split_official is False
        assert any(f"official: {total} classes" in n and "subset" in n for n in r.notes), r.notes
    assert verify_dataset("dtd", data_root / "coop", strict=True).status == "corrupt"  # strict: not official


def test_official_split_file_is_recognised(data_root, tmp_path):
    official = data_root / "splits" / "split_zhou_DescribableTextures.json"
    if not official.is_file():
        pytest.skip(f"{official} not found")
    folder = _dtd(tmp_path)
    report = verify_dataset("dtd", tmp_path, split_file=official)
    assert report.split_official is True and report.status == "missing"  # 47 classes, our folder has 3
    assert "of 5640 images listed in split_zhou_DescribableTextures.json are missing" in report.problem
    assert folder.is_dir()


def test_deleting_one_real_image_fails_naming_it_in_one_line(data_root, tmp_path):
    copy = linked_copy(data_root / "coop" / "dtd", tmp_path / "dtd")
    victim = sorted((copy / "images").rglob("*.jpg"))[7]
    victim.unlink()
    report = verify_dataset("dtd", tmp_path)
    assert report.status == "missing"
    line = report.line()
    assert "\n" not in line and str(victim) in line and "1 of 1200 images" in line
    with pytest.raises(DatasetNotFoundError, match=str(victim)):
        check_dataset("dtd", tmp_path)


def test_absent_missing_split_and_corrupt_images(tmp_path):
    report = verify_dataset("dtd", tmp_path)
    assert report.status == "absent" and "ssp-data download dtd" in report.fix
    folder = _dtd(tmp_path)
    assert verify_dataset("dtd", tmp_path, images="decode").ok
    bad = folder / "images" / DTD_CLASSES[1] / sorted(os.listdir(folder / "images" / DTD_CLASSES[1]))[0]
    bad.write_bytes(b"not a jpeg")
    assert verify_dataset("dtd", tmp_path, images="exists").ok  # the cheap check does not open images
    report = verify_dataset("dtd", tmp_path, images="header")
    assert report.status == "corrupt" and str(bad) in report.line() and "--skip-bad-images" in report.fix
    (folder / "split_zhou_DescribableTextures.json").write_text("{not json")
    report = verify_dataset("dtd", tmp_path)
    assert report.status == "corrupt" and "not valid JSON" in report.problem
    (folder / "split_zhou_DescribableTextures.json").unlink()
    report = verify_dataset("dtd", tmp_path)
    assert report.status == "missing" and "split file not found" in report.problem


def test_stanford_cars_doubled_mirror_layout_gets_the_fix(tmp_path):
    folder = tmp_path / "stanford_cars"
    split = {"train": [["cars_train/00001.jpg", 0, "a car"]], "val": [["cars_train/00002.jpg", 0, "a car"]],
             "test": [["cars_test/00001.jpg", 0, "a car"]]}
    write_tree(folder, {"split_zhou_StanfordCars.json": json.dumps(split).encode(),
                        "cars_train/cars_train/00001.jpg": b"x", "cars_train/cars_train/00002.jpg": b"x",
                        "cars_test/cars_test/00001.jpg": b"x"})
    report = verify_dataset("stanford_cars", tmp_path)
    assert report.status == "missing" and "doubled folders" in report.fix
    assert f"mv {folder / 'cars_train' / 'cars_train'}" in report.fix


def test_verify_root_finds_only_present_folders_and_rejects_imagefolder(tmp_path):
    folder = _dtd(tmp_path)
    assert [r.name for r in verify_root(tmp_path)] == ["dtd"]
    assert [(r.name, r.folder) for r in verify_root(folder)] == [("dtd", folder)]  # the dataset folder itself
    with pytest.raises(ValueError, match="no fixed layout"):
        verify_dataset("imagefolder", tmp_path)
    assert check_dataset("imagefolder", tmp_path) is None

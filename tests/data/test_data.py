"""ssp.data: CoOp-layout readers, the generic image folder, the few-shot protocol, image loading."""
from __future__ import annotations

import json
import os
import pickle
import random
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssp.data import (
    DatasetNotFoundError,
    DatasetSplits,
    FewShotSplits,
    ImageDataset,
    ImageLoadError,
    Sample,
    get_dataset,
    list_datasets,
    make_fewshot_splits,
    read_split_file,
)

BENCHMARKS = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
              "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]


# --------------------------------------------------------------------------------------------- helpers
def _write_image(path: Path, color=(120, 30, 200), size=(8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _synthetic(counts: list[int], val_counts: list[int] | None = None, name: str = "toy") -> DatasetSplits:
    """A dataset without files: class c has counts[c] train samples (paths need not exist)."""
    classnames = [f"class {c}" for c in range(len(counts))]

    def make(split: str, per_class: list[int]) -> list[Sample]:
        return [Sample(f"/toy/{split}/c{c}/img{i:03d}.jpg", c, classnames[c])
                for c, n in enumerate(per_class) for i in range(n)]

    return DatasetSplits(
        name=name, root=Path("/toy"), classnames=classnames, templates=["a photo of a {}."],
        train=make("train", counts), val=None if val_counts is None else make("val", val_counts),
        test=make("test", [3] * len(counts)),
    )


def _check_class_major(fs: FewShotSplits) -> None:
    labels = [s.label for s in fs.support]
    assert labels == sorted(labels)
    assert Counter(labels) == {c: fs.shots for c in range(fs.n_classes)}


# --------------------------------------------------------------------------------------------- registry
SHIFT_TARGETS = ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


def test_registry_lists_the_eleven_benchmarks_the_shift_targets_and_imagefolder():
    assert list_datasets() == BENCHMARKS + SHIFT_TARGETS + ["imagefolder"]
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*dtd"):
        get_dataset("mnist", "/nowhere")


@pytest.mark.parametrize("name", list_datasets())
def test_every_dataset_names_path_layout_and_card_when_missing(name, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset(name, tmp_path / "nope")
    msg = str(err.value)
    assert str(tmp_path / "nope") in msg and f"datasets/{name}.md" in msg
    assert (Path(__file__).resolve().parents[2] / "datasets" / f"{name}.md").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=rf"(?s)datasets/{name}\.md"):
        get_dataset(name, tmp_path / "empty")  # exists, but holds none of the dataset's files


# --------------------------------------------------------------------------------------------- real data
# Expected counts come from the split files and folders themselves, so SSP_DATA_ROOT may point at
# the shared subsets or at the full datasets.
def _split_counts(split_json: Path) -> tuple[dict[str, int], list[str]]:
    """Sizes of train/val/test and the class names in label order (CoOp's clean-up applied)."""
    raw = json.loads(split_json.read_text())
    names = {label: name for split in raw.values() for _, label, name in split}
    return ({k: len(v) for k, v in raw.items()},
            [names[c].replace("_", " ").strip() for c in range(len(names))])


def test_dtd_subset_parses_from_parent_and_from_dataset_folder(data_root):
    ds = get_dataset("dtd", data_root / "coop")
    counts, classnames = _split_counts(data_root / "coop" / "dtd" / "split_zhou_DescribableTextures.json")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (counts["train"], counts["val"], counts["test"])
    assert ds.classnames == classnames and ds.classnames[:2] == ["banded", "blotchy"]
    assert ds.templates == ["{} texture."]
    assert ds.root == data_root / "coop" / "dtd"
    for split in (ds.train, ds.val, ds.test):
        assert {s.label for s in split} == set(range(len(classnames)))
        for s in split:
            assert os.path.isabs(s.path) and os.path.isfile(s.path)
            assert s.classname == ds.classnames[s.label]
            assert Path(s.path).parent.name == s.classname  # DTD images live in images/<class>/
    same = get_dataset("dtd", data_root / "coop" / "dtd")
    assert same.train == ds.train and same.test == ds.test and same.root == ds.root
    # split_file override reads the same JSON from an explicit place
    override = get_dataset("dtd", data_root / "coop",
                           split_file=data_root / "coop" / "dtd" / "split_zhou_DescribableTextures.json")
    assert override.val == ds.val


def test_oxford_pets_subset(data_root):
    ds = get_dataset("oxford_pets", data_root / "coop")
    counts, classnames = _split_counts(data_root / "coop" / "oxford_pets" / "split_zhou_OxfordPets.json")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (counts["train"], counts["val"], counts["test"])
    assert ds.classnames == classnames and "american bulldog" in ds.classnames  # underscores -> spaces
    assert ds.templates == ["a photo of a {}, a type of pet."]
    for split in (ds.train, ds.val, ds.test):
        assert sorted({s.label for s in split}) == list(range(len(classnames)))
        assert all(os.path.isfile(s.path) for s in split)
    assert {Path(s.path).parent for s in ds.test} == {data_root / "coop" / "oxford_pets" / "images"}


def test_imagenet_layout(data_root):
    root = data_root / "imagenet_tiny"
    ds = get_dataset("imagenet", root)
    pairs = [line.split(maxsplit=1) for line in (root / "classnames.txt").read_text().splitlines()]
    assert ds.classnames == [name for _, name in pairs]
    assert ds.val is None
    assert len(ds.templates) == 7 and "itap of a {}." in ds.templates
    wnid_of = [w for w, _ in pairs]
    for split, folder in ((ds.train, "train"), (ds.test, "val")):  # counts from the folders
        on_disk = [len([f for f in os.listdir(root / "images" / folder / w) if not f.startswith(".")])
                   for w in wnid_of]
        assert Counter(s.label for s in split) == {c: n for c, n in enumerate(on_disk)}
    for s in ds.train[:50] + ds.test[-50:]:
        assert os.path.isfile(s.path) and Path(s.path).parent.name == wnid_of[s.label]
    assert all("/images/val/" in s.path for s in ds.test)
    # the parent folder is not named "imagenet": the dataset folder itself must be given
    with pytest.raises(DatasetNotFoundError, match="datasets/imagenet.md"):
        get_dataset("imagenet", data_root)


@pytest.mark.parametrize("split_name, n_classes", [
    ("Caltech101", 100), ("DescribableTextures", 47), ("EuroSAT", 10), ("OxfordFlowers", 102),
    ("OxfordPets", 37), ("StanfordCars", 196), ("UCF101", 101)])
def test_official_split_files_parse_without_images(data_root, tmp_path, split_name, n_classes):
    path = data_root / "splits" / f"split_zhou_{split_name}.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    ds = read_split_file(path, tmp_path / "images")
    raw = json.loads(path.read_text())
    assert len(ds.classnames) == n_classes
    for split in ("train", "val", "test"):
        samples = getattr(ds, split)
        assert len(samples) == len(raw[split])
        assert {s.label for s in samples} == set(range(n_classes))
        first = raw[split][0]
        assert samples[0].path == os.path.join(str(tmp_path / "images"), first[0])
        assert samples[0].label == first[1]
    assert all("_" not in c for c in ds.classnames)
    if split_name == "EuroSAT":
        assert ds.classnames[0] == "Annual Crop Land" and "Sea or Lake" in ds.classnames
    if split_name == "UCF101":
        assert ds.classnames[0] == "Apply Eye Makeup"


def test_real_fewshot_splits_are_disjoint_and_reproducible(data_root):
    ds = get_dataset("dtd", data_root / "coop")
    for seed in (1, 2, 3):
        fs = make_fewshot_splits(ds, 4, seed)
        _check_class_major(fs)
        assert Counter(s.label for s in fs.val) == {c: 4 for c in range(ds.n_classes)}
        sup, val, test = ({s.path for s in x} for x in (fs.support, fs.val, fs.test))
        assert not (sup & val) and not (sup & test) and not (val & test)
        assert fs.test == ds.test
    imagenet = get_dataset("imagenet", data_root / "imagenet_tiny")
    fs = make_fewshot_splits(imagenet, 8, 1)
    assert len(fs.support) == 8 * imagenet.n_classes
    assert Counter(s.label for s in fs.val) == {c: 4 for c in range(imagenet.n_classes)}
    assert not {s.path for s in fs.support} & {s.path for s in fs.val}


# --------------------------------------------------------------------------------------------- sampling
def test_sampling_is_deterministic_and_order_independent():
    ds = _synthetic([20, 9, 30, 12], val_counts=[6, 6, 6, 6])
    a = make_fewshot_splits(ds, 8, 1)
    b = make_fewshot_splits(ds, 8, 1)
    assert a.support == b.support and a.val == b.val
    assert make_fewshot_splits(ds, 8, 2).support != a.support
    four = make_fewshot_splits(ds, 4, 1).support
    # shots are part of the seed: the 4 shots of a class are not the first 4 of its 8 shots
    assert any(four[4 * k : 4 * k + 4] != a.support[8 * k : 8 * k + 4] for k in range(4))
    shuffled = _synthetic([20, 9, 30, 12], val_counts=[6, 6, 6, 6])
    random.Random(0).shuffle(shuffled.train)
    random.Random(1).shuffle(shuffled.val)
    c = make_fewshot_splits(shuffled, 8, 1)
    assert c.support == a.support and c.val == a.val
    _check_class_major(a)
    assert all(len({s.path for s in a.support if s.label == k}) == 8 for k in range(4))  # no repeats


def test_sampling_is_pinned_across_versions():
    # Reproducibility promise: this draw must not change between numpy / Python versions.
    # If it does, published seeds no longer select the same images -- investigate, do not re-pin.
    ds = _synthetic([10, 10])
    fs = make_fewshot_splits(ds, 3, 1)
    got = [Path(s.path).name for s in fs.support]
    rng = [np.random.default_rng([1, 3, 0, c]).permutation(10)[:3] for c in (0, 1)]
    assert got == [f"img{i:03d}.jpg" for perm in rng for i in perm]
    assert got == PINNED_DRAW


PINNED_DRAW = ["img002.jpg", "img000.jpg", "img008.jpg", "img003.jpg", "img000.jpg", "img002.jpg"]


def test_with_replacement_warns_and_uses_every_candidate():
    ds = _synthetic([10, 3, 10], val_counts=[2, 2, 2])
    with pytest.warns(UserWarning, match=r"class 1 \('class 1'\).*only 3.*8 shots"):
        fs = make_fewshot_splits(ds, 8, 1)
    _check_class_major(fs)
    counts = Counter(s.path for s in fs.support if s.label == 1)
    assert len(counts) == 3 and set(counts.values()) <= {2, 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_fewshot_splits(ds, 3, 1)  # enough images everywhere: no warning


def test_validation_policies():
    ds = _synthetic([20, 20, 20], val_counts=[10, 2, 10])
    coop = make_fewshot_splits(ds, 16, 1)
    assert Counter(s.label for s in coop.val) == {0: 4, 1: 2, 2: 4}  # min(K, 4), fewer if fewer exist
    assert Counter(s.label for s in make_fewshot_splits(ds, 2, 1).val) == {0: 2, 1: 2, 2: 2}
    full = make_fewshot_splits(ds, 2, 1, val_policy="full")
    assert full.val == ds.val
    three = make_fewshot_splits(ds, 2, 1, val_policy=3)
    assert Counter(s.label for s in three.val) == {0: 3, 1: 2, 2: 3}
    assert set(three.val) <= set(ds.val) and len(set(three.val)) == len(three.val)
    assert [s.label for s in three.val] == sorted(s.label for s in three.val)
    for bad in ("all", 0, -1, True, 2.5):
        with pytest.raises(ValueError, match="val_policy"):
            make_fewshot_splits(ds, 2, 1, val_policy=bad)
    for shots, seed in ((0, 1), (2, -1), (2.0, 1)):
        with pytest.raises(ValueError, match="shots|seed"):
            make_fewshot_splits(ds, shots, seed)


def test_carved_validation_without_val_split():
    ds = _synthetic([12, 12, 5])
    fs = make_fewshot_splits(ds, 4, 3)
    support = {s.path for s in fs.support}
    assert Counter(s.label for s in fs.val) == {0: 4, 1: 4, 2: 1}  # class 2: only 1 image left
    assert not support & {s.path for s in fs.val}
    assert {s.path for s in fs.val} <= {s.path for s in ds.train}
    two = make_fewshot_splits(ds, 4, 3, val_policy=2)
    assert Counter(s.label for s in two.val) == {0: 2, 1: 2, 2: 1}
    with pytest.warns(UserWarning, match="very large"):
        full = make_fewshot_splits(ds, 4, 3, val_policy="full")
    assert len(full.val) == 8 + 8 + 1 and not support & {s.path for s in full.val}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_fewshot_splits(_synthetic([3, 10]), 4, 1)  # class 0: 3 images, all used as shots
    messages = [str(w.message) for w in caught]
    assert any("only 3 training image(s)" in m for m in messages)
    assert any("no train images left" in m and "'class 0'" in m for m in messages)


def test_class_without_train_images_is_an_error():
    ds = _synthetic([5, 5])
    ds.train = [s for s in ds.train if s.label == 0]
    with pytest.raises(ValueError, match=r"class 1 \('class 1'\).*no training images"):
        make_fewshot_splits(ds, 1, 1)


# --------------------------------------------------------------------------------------------- errors
def test_missing_dataset_folder_names_the_split_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="split_zhou_DescribableTextures.json"):
        get_dataset("dtd", tmp_path / "nope")


def test_missing_split_file_and_missing_images(tmp_path):
    dtd = tmp_path / "dtd"
    _write_image(dtd / "images" / "banded" / "a.jpg")
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("dtd", tmp_path)
    assert str(dtd / "split_zhou_DescribableTextures.json") in str(err.value)
    assert "datasets/dtd.md" in str(err.value)
    split = {"train": [["banded/a.jpg", 0, "banded"]], "val": [["banded/b.jpg", 0, "banded"]],
             "test": [["banded/a.jpg", 0, "banded"]]}
    (dtd / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    with pytest.raises(DatasetNotFoundError, match=r"1 image\(s\).*missing") as err:
        get_dataset("dtd", dtd)
    assert str(dtd / "images" / "banded" / "b.jpg") in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="split file not found"):
        get_dataset("dtd", dtd, split_file=tmp_path / "other.json")


def test_messages_name_python_arguments_or_cli_flags(tmp_path):
    """The same missing split names ``split_file=`` to a Python caller, ``--split-file`` on the
    command line (``ssp.cli`` runs inside ``cli_messages``-equivalent detection)."""
    from ssp._checks import cli_messages

    dtd = tmp_path / "dtd"
    (dtd / "images").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("dtd", dtd)
    assert "split_file=PATH" in str(err.value) and "--split-file" not in str(err.value)
    with cli_messages(), pytest.raises(DatasetNotFoundError) as err:
        get_dataset("dtd", dtd)
    assert "--split-file PATH" in str(err.value) and "split_file=" not in str(err.value)
    with cli_messages(), pytest.raises(ValueError, match="drop --split-file"):
        get_dataset("imagefolder", tmp_path, split_file=tmp_path / "x.json")


def test_bad_split_files(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": [], "test": []}))
    with pytest.raises(ValueError, match=r"missing \['val'\]"):
        read_split_file(path, tmp_path)
    path.write_text(json.dumps({"train": [["a.jpg", 0, "x"]], "val": [["b.jpg", 0, "y"]], "test": []}))
    with pytest.raises(ValueError, match="label 0 is called both 'x' and 'y'"):
        read_split_file(path, tmp_path)
    path.write_text(json.dumps({"train": [["a.jpg", 0, "x"], ["b.jpg", 2, "z"]], "val": [], "test": []}))
    with pytest.raises(ValueError, match="without gaps"):
        read_split_file(path, tmp_path)


def test_unreadable_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00garbage" * 10)
    good = tmp_path / "good.jpg"
    _write_image(good, size=(5, 4))
    data = ImageDataset([Sample(str(good), 0, "a"), Sample(str(bad), 1, "b"),
                         Sample(str(tmp_path / "gone.jpg"), 1, "b")])
    image, label, index = data[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 4, 5) and (label, index) == (0, 0)
    with pytest.raises(ImageLoadError, match="corrupt.jpg"):
        data[1]
    with pytest.raises(ImageLoadError, match="gone.jpg"):
        data[2]


# --------------------------------------------------------------------------------------------- other layouts
def test_image_dataset_converts_to_rgb_and_applies_transform(tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (6, 6), 128).save(gray)
    data = ImageDataset([Sample(str(gray), 4, "g")], transform=lambda im: torch.tensor(im.size + (len(im.getbands()),)))
    out, label, index = data[0]
    assert out.tolist() == [6, 6, 3] and label == 4 and index == 0
    loader = torch.utils.data.DataLoader(ImageDataset([Sample(str(gray), 4, "g")] * 3), batch_size=3)
    images, labels, indices = next(iter(loader))
    assert images.shape == (3, 3, 6, 6) and labels.tolist() == [4, 4, 4] and indices.tolist() == [0, 1, 2]
    # DataLoader workers started with "spawn" pickle the dataset
    copy = pickle.loads(pickle.dumps(ImageDataset([Sample(str(gray), 4, "g")])))
    assert copy.samples == [Sample(str(gray), 4, "g")]


def test_imagefolder(tmp_path):
    root = tmp_path / "mydata"
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        for cls in ("zebra", "apple_tree"):
            for i in range(n):
                _write_image(root / split / cls / f"{i}.png")
    (root / "train" / "zebra" / "notes.txt").write_text("not an image")
    ds = get_dataset("imagefolder", root)
    assert ds.classnames == ["apple tree", "zebra"]  # sorted folder names, underscores -> spaces
    assert ds.templates == ["a photo of a {}."]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 4, 6)
    assert [s.label for s in ds.train] == [0] * 5 + [1] * 5
    assert all(s.path.endswith(".png") and os.path.isfile(s.path) for s in ds.train)
    fs = make_fewshot_splits(ds, 2, 1)
    _check_class_major(fs)
    image, label, _ = ImageDataset(fs.support)[3]
    assert image.shape == (3, 6, 8) and label == 1

    (root / "templates.txt").write_text("a photo of a {}.\nart of the {}.\n")
    assert get_dataset("imagefolder", root).templates == ["a photo of a {}.", "art of the {}."]
    assert get_dataset("imagefolder", root, templates=["{}"]).templates == ["{}"]
    with pytest.raises(ValueError, match="exactly one"):
        get_dataset("imagefolder", root, templates=["no placeholder"])

    # without val/: validation is carved from train
    for f in (root / "val").rglob("*.png"):
        f.unlink()
    for d in (root / "val").iterdir():
        d.rmdir()
    (root / "val").rmdir()
    ds = get_dataset("imagefolder", root)
    assert ds.val is None
    fs = make_fewshot_splits(ds, 2, 1)
    assert Counter(s.label for s in fs.val) == {0: 2, 1: 2}
    assert not {s.path for s in fs.val} & {s.path for s in fs.support}

    _write_image(root / "test" / "banana" / "0.png")
    with pytest.raises(ValueError, match=r"only in test: \['banana'\]"):
        get_dataset("imagefolder", root)
    _write_image(tmp_path / "partial" / "train" / "zebra" / "0.png")
    with pytest.raises(DatasetNotFoundError, match="'test' folder not found: .*partial"):
        get_dataset("imagefolder", tmp_path / "partial")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_imagefolder_empty_class_folder_is_an_error_in_every_split(tmp_path, split):
    """One rule for every split: an empty class folder is refused (it used to drop the class from
    the test set silently)."""
    root = tmp_path / "data"
    for s in ("train", "val", "test"):
        for cls in ("ant", "bee"):
            if not (s == split and cls == "bee"):
                _write_image(root / s / cls / "0.png")
    (root / split / "bee").mkdir(parents=True, exist_ok=True)
    with pytest.raises(DatasetNotFoundError, match=f"no images in .*{split}.bee .*every split needs images"):
        get_dataset("imagefolder", root)


def test_dataset_name_typo_suggests_the_nearest_name():
    with pytest.raises(ValueError, match="unknown dataset 'oxford_flower'; did you mean 'oxford_flowers'"):
        get_dataset("oxford_flower", "/nonexistent")
    with pytest.raises(ValueError, match="unknown dataset 'imagnet'; did you mean 'imagenet'"):
        get_dataset("imagnet", "/nonexistent")
    with pytest.raises(ValueError, match=r"unknown dataset 'qwerty'; choose one of \["):
        get_dataset("qwerty", "/nonexistent")


def test_too_many_shots_for_a_carved_validation_set_names_the_class_and_the_fix():
    ds = _synthetic([6, 9])  # no validation split: it is carved from train images that are not shots
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sampling with replacement"
        with pytest.raises(ValueError, match=r"100 shots use up every train image \(e.g. class 0 \('class 0'\) "
                                             r"has 6\).* use shots below"):
            make_fewshot_splits(ds, 100, 1)


def test_support_that_lost_a_class_to_skipped_images_is_refused():
    from ssp.data.fewshot import check_support_after_skips

    fs = make_fewshot_splits(_synthetic([3, 3, 3]), 1, 1)
    check_support_after_skips(fs.support, None, fs.classnames)        # nothing skipped
    check_support_after_skips(fs.support, [0, 1, 2], fs.classnames)   # every shot kept
    lost = fs.support[1].path
    with pytest.raises(ValueError, match=rf"class 1 \('class 1'\) has no readable training image left: its "
                                         rf"shot\(s\) {lost} could not be read.*drop skip_bad_images=True"):
        check_support_after_skips(fs.support, [0, 2], fs.classnames)
    two = make_fewshot_splits(_synthetic([3, 3]), 2, 1)
    check_support_after_skips(two.support, [0, 1, 3], two.classnames)  # class 1 keeps one of two shots


def test_eurosat_raw_classnames_are_remapped(tmp_path):
    euro = tmp_path / "eurosat"
    for cls in ("AnnualCrop", "SeaLake"):
        _write_image(euro / "2750" / cls / f"{cls}_1.jpg")
    split = {s: [["AnnualCrop/AnnualCrop_1.jpg", 0, "AnnualCrop"], ["SeaLake/SeaLake_1.jpg", 1, "SeaLake"]]
             for s in ("train", "val", "test")}
    (euro / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    ds = get_dataset("eurosat", tmp_path)
    assert ds.classnames == ["Annual Crop Land", "Sea or Lake"]
    assert ds.templates == ["a centered satellite photo of {}."]


def test_fgvc_aircraft_official_lists(tmp_path):
    air = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "F/A-18", "Cessna 172"]
    (air / "images").mkdir(parents=True)
    (air / "variants.txt").write_text("\n".join(variants) + "\n")
    lists = {"train": [("0001", 2), ("0002", 0)], "val": [("0003", 1)], "test": [("0004", 1), ("0005", 2)]}
    for split, rows in lists.items():
        (air / f"images_variant_{split}.txt").write_text("".join(f"{i} {variants[v]}\n" for i, v in rows))
        for i, _ in rows:
            _write_image(air / "images" / f"{i}.jpg")
    ds = get_dataset("fgvc_aircraft", air)
    assert ds.classnames == variants
    assert [(Path(s.path).name, s.label, s.classname) for s in ds.train] == [
        ("0001.jpg", 2, "Cessna 172"), ("0002.jpg", 0, "707-320")]
    assert [s.label for s in ds.test] == [1, 2]
    (air / "images_variant_val.txt").write_text("0003 Boeing 999\n")
    with pytest.raises(ValueError, match="images_variant_val.txt, line 1"):
        get_dataset("fgvc_aircraft", tmp_path)


@pytest.mark.filterwarnings("ignore:.*no train images left for the carved validation set")
def test_unreadable_shots_are_replaced_by_seeded_readable_train_images_of_their_class():
    from ssp.data.fewshot import replace_unreadable_shots

    ds = _synthetic([6, 6, 1])  # no validation split: validation is carved from train, never reused
    fs = make_fewshot_splits(ds, 1, 1)
    bad = [fs.support[0].path, fs.support[2].path]  # class 0's shot, and class 2's only image
    unreadable = {p for p in bad}
    tried = []

    def readable(sample):
        tried.append(sample.path)
        return sample.path not in unreadable

    new, replaced = replace_unreadable_shots(fs, bad, readable)
    assert [r["class"] for r in replaced] == [0]  # class 2 has nothing else: its shot stays out
    by = replaced[0]["by"]
    assert new.support[0].path == by and new.support[0].label == 0 and new.support[1:] == fs.support[1:]
    assert by not in {s.path for s in fs.val} and by != bad[0]
    again, replaced_again = replace_unreadable_shots(fs, bad, lambda s: s.path not in unreadable)
    assert replaced_again == replaced and again.support == new.support  # seeded
    other = make_fewshot_splits(ds, 1, 2)
    assert replace_unreadable_shots(other, [], readable) == (other, [])
    # a candidate that cannot be read either is passed over
    unreadable.add(by)
    third, replaced_third = replace_unreadable_shots(fs, bad, readable)
    assert replaced_third[0]["by"] not in (by, bad[0]) and third.support[0].label == 0

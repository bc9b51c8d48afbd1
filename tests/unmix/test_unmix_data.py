"""VOC / COCO loaders against the real files' known contents, and a synthetic VOC XML layout."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssp.data import DatasetNotFoundError
from ssp.unmix.data import (
    VOC_CLASSES,
    get_multilabel_dataset,
    get_segmentation_dataset,
    load_voc_multilabel,
    read_mask,
)

# classes present in each voc_tiny mask (0 background and 255 void excluded)
VOC_TINY_LABELS = {
    "deeplab_val_0000": {"aeroplane"}, "deeplab_val_0001": {"aeroplane"}, "deeplab_val_0008": {"horse"},
    "deeplab_val_0020": {"sheep"}, "deeplab_val_0023": {"sheep"}, "deeplab_val_0060": {"bird"},
    "deeplab_val_0114": {"bird"}, "deeplab_val_0120": {"bicycle", "bottle"}, "deeplab_val_0166": {"aeroplane"},
    "deeplab_val_0293": {"cow"}, "deeplab_val_0294": {"car", "person"}, "deeplab_val_0417": {"aeroplane"},
    "deeplab_val_0474": {"bus"}, "deeplab_val_0582": {"motorbike", "person"},
    "2011_000003": {"bottle", "person"}, "2011_000006": {"chair", "person", "sofa"},
    "2011_000025": {"bus", "car"},
}


def test_voc_tiny_labels_from_masks(voc_root):
    ds = get_multilabel_dataset("voc", voc_root)
    assert ds.name == "voc2012" and ds.split == "val" and ds.source == "masks" and ds.n_classes == 20
    got = {s.path.rsplit("/", 1)[1][:-4]: {VOC_CLASSES[i] for i in s.labels} for s in ds.samples}
    assert got == VOC_TINY_LABELS
    y = ds.targets()
    assert y.shape == (17, 20) and y.sum() == sum(len(v) for v in VOC_TINY_LABELS.values())


def test_voc_tiny_segmentation_pairs(voc_root):
    ds = get_segmentation_dataset("voc", voc_root)
    assert len(ds.samples) == 17 and ds.classnames[10] == "dining table"
    i = [s.key for s in ds.samples].index("2011_000003")
    mask = ds.mask(i)
    assert mask.shape == (338, 500)          # the labelme mask, H x W
    assert set(np.unique(mask)) == {0, 5, 15, 255}
    image = Image.open(ds.samples[i].image)
    assert image.size == (500, 338)


def test_coco_tiny_image_labels_and_object_mask(coco_root):
    ds = get_multilabel_dataset("coco", coco_root)
    assert ds.split == "val2017" and ds.n_classes == 80 and len(ds.samples) == 1
    assert {ds.classnames[i] for i in ds.samples[0].labels} == {"cat", "couch", "bed", "remote"}
    seg = get_segmentation_dataset("coco2017", coco_root)
    mask = seg.mask(0)
    assert mask.shape == (480, 640)
    names = {seg.classnames[v - 1] for v in np.unique(mask) if 0 < v < 255}
    assert names == {"cat", "couch", "bed", "remote"}
    assert (mask == 0).any()


def _write_voc2007(root):
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    objects = {"000001": [("dog", 0), ("person", 1)], "000002": [("car", 0), ("car", 1), ("tvmonitor", 0)]}
    for image_id, objs in objects.items():
        body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objs)
        (voc / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{body}</annotation>")
        Image.new("RGB", (8, 8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    return voc


def test_voc2007_xml_labels_and_difficult_objects(tmp_path):
    _write_voc2007(tmp_path)
    ds = get_multilabel_dataset("voc2007", tmp_path)       # default split: test
    assert ds.source == "xml" and ds.split == "test"
    y = ds.targets()
    dog, person, car, tv = (VOC_CLASSES.index(n) for n in ("dog", "person", "car", "tvmonitor"))
    assert y[0, dog] == 1 and y[0, person] == -1          # difficult only -> ignored
    assert y[1, car] == 1 and y[1, tv] == 1 and y.sum() == 1 + (-1) + 2
    # the VOCdevkit folder and the VOC2007 folder work as roots too
    assert len(load_voc_multilabel(tmp_path / "VOCdevkit", year=2007).samples) == 2
    assert len(load_voc_multilabel(tmp_path / "VOCdevkit" / "VOC2007").samples) == 2


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="VOC2012 or VOC2007"):
        get_multilabel_dataset("voc", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="annotations"):
        get_multilabel_dataset("coco", tmp_path)
    with pytest.raises(ValueError, match="unknown multi-label dataset"):
        get_multilabel_dataset("imagenet", tmp_path)
    voc = _write_voc2007(tmp_path)
    (voc / "Annotations" / "000002.xml").write_text("<annotation><object><name>cart</name></object></annotation>")
    with pytest.raises(ValueError, match="unknown VOC class 'cart'"):
        load_voc_multilabel(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="palette"):
        read_mask(tmp_path / "rgb.png")

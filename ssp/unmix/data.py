"""Multi-label and segmentation data in their official layouts: Pascal VOC 2007 / 2012 and
COCO 2014 / 2017.

* VOC: ``VOCdevkit/VOC<year>/{JPEGImages, Annotations, SegmentationClass, ImageSets/{Main,
  Segmentation}}``. Image-level labels from the XML annotations (an object marked ``difficult``
  only gives the label -1, "ignored", unless the class also has a non-difficult object) or from
  the segmentation masks (classes present, 0 = background and 255 = void excluded).
* COCO: ``<root>/annotations/instances_<split>.json`` and the images in ``<root>/<split>/``;
  image-level labels over the 80 categories (sorted by category id), and semantic masks
  (COCO-Object: background 0, category k at k + 1) rasterised from the instance polygons.

``root`` may be the dataset folder itself or any parent up to ``VOCdevkit``'s parent.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ssp.data import DatasetNotFoundError

__all__ = ["VOC_CLASSES", "VOC_PROMPT_NAMES", "MultiLabelSample", "MultiLabelDataset",
           "SegmentationSample", "SegmentationDataset", "find_voc_dir", "read_mask",
           "load_voc_multilabel", "load_voc_segmentation", "load_coco_multilabel",
           "load_coco_segmentation", "get_multilabel_dataset", "get_segmentation_dataset",
           "MULTILABEL_DATASETS", "SEGMENTATION_DATASETS"]

#: VOC class names as written in the annotations, label order 1..20 of the masks.
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
#: The same classes as prompt text.
VOC_PROMPT_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
                    "train", "tv monitor")
_VOC_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}


@dataclass(frozen=True)
class MultiLabelSample:
    """An image with its present classes (``labels``) and the classes seen only as difficult
    objects (``ignored``)."""

    path: str
    labels: tuple[int, ...]
    ignored: tuple[int, ...] = ()


@dataclass
class MultiLabelDataset:
    name: str
    root: Path
    split: str
    classnames: list[str]
    samples: list[MultiLabelSample]
    source: str

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def targets(self) -> np.ndarray:
        """``[N, C]`` int8: 1 present, 0 absent, -1 ignored (difficult only)."""
        y = np.zeros((len(self.samples), self.n_classes), dtype=np.int8)
        for i, s in enumerate(self.samples):
            y[i, list(s.ignored)] = -1
            y[i, list(s.labels)] = 1
        return y

    def __repr__(self) -> str:
        return (f"MultiLabelDataset(name={self.name!r}, split={self.split!r}, classes={self.n_classes}, "
                f"images={len(self.samples)}, source={self.source!r})")


@dataclass(frozen=True)
class SegmentationSample:
    image: str
    mask: str | None  # palette / index PNG; None when the mask is rasterised from annotations
    key: str


@dataclass
class SegmentationDataset:
    """Images with semantic masks: 0 = background, k = ``classnames[k - 1]``, 255 = ignore."""

    name: str
    root: Path
    split: str
    classnames: list[str]          # foreground classes, label k + 1 in the masks
    samples: list[SegmentationSample]
    ignore_index: int = 255
    _rasterise: Callable[[SegmentationSample], np.ndarray] | None = field(default=None, repr=False)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def mask(self, index: int) -> np.ndarray:
        """``[H, W]`` uint8 mask of sample ``index``; a value that is neither a class
        (``0..n_classes``) nor ``ignore_index`` is an error naming the mask file."""
        s = self.samples[index]
        mask = self._rasterise(s) if s.mask is None else read_mask(s.mask)
        values = np.unique(mask)
        bad = [int(v) for v in values if v > self.n_classes and v != self.ignore_index]
        if bad:
            source = f"mask {s.mask}" if s.mask is not None else f"the annotation mask of {s.image}"
            raise ValueError(f"{source} holds value(s) {bad[:10]} outside the classes: {self.name} masks use "
                             f"0 (background), 1..{self.n_classes} and {self.ignore_index} (ignore); fix or "
                             "remove this mask")
        return mask


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A VOC-style label PNG (palette or grayscale indices) -> ``[H, W]`` uint8 class indices."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(f"mask {path} has PIL mode {im.mode!r}; expected a palette ('P') or "
                                 "grayscale ('L') PNG of class indices, not a colour image")
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"mask file not found: {path}") from None


def find_voc_dir(root: str | os.PathLike, year: int | str | None = None) -> Path:
    """The ``VOC<year>`` folder under ``root`` (``root`` itself, ``root/VOC<year>`` or
    ``root/VOCdevkit/VOC<year>``); ``year=None`` takes 2012, else 2007, whichever exists."""
    root = Path(root).expanduser()
    years = [str(year)] if year is not None else ["2012", "2007"]
    for y in years:
        for cand in (root, root / f"VOC{y}", root / "VOCdevkit" / f"VOC{y}"):
            if cand.name == f"VOC{y}" and cand.is_dir():
                return cand
    if (root / "JPEGImages").is_dir() and year is None:
        return root
    want = " or ".join(f"VOC{y}" for y in years)
    raise DatasetNotFoundError(
        f"no {want} folder under {root}; expected the official layout "
        f"<root>/VOCdevkit/VOC<year>/{{JPEGImages,Annotations,SegmentationClass,ImageSets}} "
        "(root may also be VOCdevkit or the VOC<year> folder)")


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetNotFoundError(f"image-set file not found: {path}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"image-set file {path} lists no image")
    return ids


def _voc_xml_labels(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"annotation file not found: {path}") from None
    except ET.ParseError as err:
        raise ValueError(f"annotation file {path} is not valid XML: {err}") from None
    present, difficult = set(), set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in _VOC_INDEX:
            raise ValueError(f"{path}: unknown VOC class {name!r}; known: {', '.join(VOC_CLASSES)}")
        (difficult if (obj.findtext("difficult") or "0").strip() == "1" else present).add(_VOC_INDEX[name])
    return tuple(sorted(present)), tuple(sorted(difficult - present))


def _mask_labels(path: Path) -> tuple[int, ...]:
    values = np.unique(read_mask(path))
    bad = [int(v) for v in values if v not in (0, 255) and not 1 <= v <= len(VOC_CLASSES)]
    if bad:
        raise ValueError(f"mask {path} holds values {bad}; VOC masks use 0..20 and 255")
    return tuple(int(v) - 1 for v in values if 1 <= v <= len(VOC_CLASSES))


def load_voc_multilabel(root: str | os.PathLike, *, year: int | str | None = None, split: str | None = None,
                        source: str = "auto") -> MultiLabelDataset:
    """Pascal VOC image-level labels over the 20 classes.

    ``source``: ``"xml"`` (``Annotations/<id>.xml``, ids from ``ImageSets/Main/<split>.txt``),
    ``"masks"`` (``SegmentationClass/<id>.png``, ids from ``ImageSets/Segmentation/<split>.txt``)
    or ``"auto"`` (xml when the Annotations folder exists). ``split`` defaults to ``test`` for
    VOC 2007 with xml, else ``val``.
    """
    voc = find_voc_dir(root, year)
    if source == "auto":
        source = "xml" if (voc / "Annotations").is_dir() else "masks"
    if source not in ("xml", "masks"):
        raise ValueError(f"source must be 'auto', 'xml' or 'masks', got {source!r}")
    if split is None:
        split = "test" if (source == "xml" and voc.name == "VOC2007") else "val"
    samples = []
    if source == "xml":
        for i in _read_ids(voc / "ImageSets" / "Main" / f"{split}.txt"):
            labels, ignored = _voc_xml_labels(voc / "Annotations" / f"{i}.xml")
            samples.append(MultiLabelSample(str(voc / "JPEGImages" / f"{i}.jpg"), labels, ignored))
    else:
        for i in _read_ids(voc / "ImageSets" / "Segmentation" / f"{split}.txt"):
            labels = _mask_labels(voc / "SegmentationClass" / f"{i}.png")
            samples.append(MultiLabelSample(str(voc / "JPEGImages" / f"{i}.jpg"), labels))
    _check_images(samples, lambda s: s.path)
    return MultiLabelDataset(name=voc.name.lower(), root=voc, split=split, classnames=list(VOC_PROMPT_NAMES),
                             samples=samples, source=source)


def load_voc_segmentation(root: str | os.PathLike, *, year: int | str | None = None,
                          split: str | None = None) -> SegmentationDataset:
    """VOC semantic segmentation pairs (``JPEGImages`` + ``SegmentationClass``) of ``split``
    (default ``val``) from ``ImageSets/Segmentation``."""
    voc = find_voc_dir(root, year)
    split = split or "val"
    samples = [SegmentationSample(str(voc / "JPEGImages" / f"{i}.jpg"),
                                  str(voc / "SegmentationClass" / f"{i}.png"), i)
               for i in _read_ids(voc / "ImageSets" / "Segmentation" / f"{split}.txt")]
    _check_images(samples, lambda s: s.image)
    _check_images(samples, lambda s: s.mask)
    return SegmentationDataset(name=voc.name.lower(), root=voc, split=split, classnames=list(VOC_PROMPT_NAMES),
                               samples=samples)


def _check_images(samples, path_of) -> None:
    missing = [path_of(s) for s in samples if not os.path.isfile(path_of(s))]
    if missing:
        raise DatasetNotFoundError(f"{len(missing)} file(s) listed in the split are missing, e.g. {missing[0]}")


# ---- COCO ----

def _coco_files(root: str | os.PathLike, split: str | None) -> tuple[Path, Path, str]:
    root = Path(root).expanduser()
    ann_dir = root / "annotations"
    if not ann_dir.is_dir():
        raise DatasetNotFoundError(f"no annotations/ folder under {root}; expected the official COCO layout "
                                   "<root>/annotations/instances_<split>.json and images in <root>/<split>/")
    if split is None:
        for cand in ("val2014", "val2017", "train2014", "train2017"):
            if (ann_dir / f"instances_{cand}.json").is_file():
                split = cand
                break
        else:
            raise DatasetNotFoundError(f"no instances_<split>.json in {ann_dir}")
    ann = ann_dir / f"instances_{split}.json"
    if not ann.is_file():
        found = sorted(p.name for p in ann_dir.glob("instances_*.json"))
        raise DatasetNotFoundError(f"{ann} not found (present: {found or 'none'})")
    images = root / split
    if not images.is_dir():
        raise DatasetNotFoundError(f"COCO image folder {images} not found")
    return ann, images, split


def _read_coco(ann: Path) -> dict:
    try:
        with open(ann, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{ann} is not valid JSON: {err}") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{ann} lacks '{key}'; expected a COCO instances file")
    return data


def load_coco_multilabel(root: str | os.PathLike, *, split: str | None = None,
                         keep_empty: bool = False) -> MultiLabelDataset:
    """COCO image-level labels over the categories of ``instances_<split>.json`` (80, sorted by
    category id). Images without annotations are dropped unless ``keep_empty``."""
    ann, images, split = _coco_files(root, split)
    data = _read_coco(ann)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    labels: dict[int, set[int]] = {}
    for a in data["annotations"]:
        if a["category_id"] not in index:
            raise ValueError(f"{ann}: annotation {a.get('id')} has unknown category_id {a['category_id']}")
        labels.setdefault(a["image_id"], set()).add(index[a["category_id"]])
    samples = [MultiLabelSample(str(images / im["file_name"]), tuple(sorted(labels.get(im["id"], ()))))
               for im in sorted(data["images"], key=lambda im: im["id"])
               if keep_empty or im["id"] in labels]
    _check_images(samples, lambda s: s.path)
    return MultiLabelDataset(name=f"coco{split[-4:]}", root=Path(root), split=split,
                             classnames=[c["name"] for c in cats], samples=samples, source="instances")


def _rle_decode(rle: dict, height: int, width: int) -> np.ndarray:
    counts = rle["counts"]
    if isinstance(counts, str):
        try:
            from pycocotools import mask as mask_utils
        except ImportError:
            raise ValueError("compressed RLE segmentation needs pycocotools (pip install pycocotools)") from None
        return mask_utils.decode(rle).astype(bool)
    flat = np.zeros(height * width, dtype=bool)
    pos, value = 0, False
    for c in counts:
        flat[pos:pos + c] = value
        pos += c
        value = not value
    return flat.reshape(width, height).T  # column-major


def _coco_mask(anns: list[dict], index: dict[int, int], height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    mask = np.zeros((height, width), dtype=np.uint8)
    # larger objects first, so smaller ones drawn later stay visible
    for a in sorted(anns, key=lambda a: -float(a.get("area", 0))):
        value = 255 if a.get("iscrowd", 0) else index[a["category_id"]] + 1
        seg = a["segmentation"]
        if isinstance(seg, list):
            canvas = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(canvas)
            for poly in seg:
                if len(poly) >= 6:
                    draw.polygon([float(v) for v in poly], fill=1, outline=1)
            region = np.array(canvas, dtype=bool)
        else:
            region = _rle_decode(seg, height, width)
        mask[region] = value
    return mask


def load_coco_segmentation(root: str | os.PathLike, *, split: str | None = None) -> SegmentationDataset:
    """COCO-Object semantic segmentation: masks rasterised from the instance annotations
    (background 0, category k -> k + 1, crowd regions 255), images without annotations dropped."""
    ann, images, split = _coco_files(root, split)
    data = _read_coco(ann)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    info = {im["id"]: im for im in data["images"]}
    samples = [SegmentationSample(str(images / info[i]["file_name"]), None, str(i)) for i in sorted(by_image)]
    _check_images(samples, lambda s: s.image)

    def rasterise(s: SegmentationSample) -> np.ndarray:
        im = info[int(s.key)]
        return _coco_mask(by_image[int(s.key)], index, int(im["height"]), int(im["width"]))

    return SegmentationDataset(name=f"coco{split[-4:]}", root=Path(root), split=split,
                               classnames=[c["name"] for c in cats], samples=samples, _rasterise=rasterise)


# ---- registries ----

MULTILABEL_DATASETS: dict[str, Callable[..., MultiLabelDataset]] = {
    "voc": lambda root, split=None: load_voc_multilabel(root, split=split),
    "voc2007": lambda root, split=None: load_voc_multilabel(root, year=2007, split=split),
    "voc2012": lambda root, split=None: load_voc_multilabel(root, year=2012, split=split),
    "coco": lambda root, split=None: load_coco_multilabel(root, split=split),
    "coco2014": lambda root, split=None: load_coco_multilabel(root, split=split or "val2014"),
    "coco2017": lambda root, split=None: load_coco_multilabel(root, split=split or "val2017"),
}
SEGMENTATION_DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "voc": lambda root, split=None: load_voc_segmentation(root, split=split),
    "voc2012": lambda root, split=None: load_voc_segmentation(root, year=2012, split=split),
    "coco": lambda root, split=None: load_coco_segmentation(root, split=split),
    "coco2014": lambda root, split=None: load_coco_segmentation(root, split=split or "val2014"),
    "coco2017": lambda root, split=None: load_coco_segmentation(root, split=split or "val2017"),
}


def _lookup(table: dict, name: str, kind: str):
    key = name.lower().replace("-", "").replace("_", "")
    if key not in table:
        raise ValueError(f"unknown {kind} dataset {name!r}; known: {', '.join(table)}")
    return table[key]


def get_multilabel_dataset(name: str, root: str | os.PathLike, *, split: str | None = None) -> MultiLabelDataset:
    """A registered multi-label dataset (``voc``, ``voc2007``, ``voc2012``, ``coco``, ``coco2014``,
    ``coco2017``) read from ``root``."""
    return _lookup(MULTILABEL_DATASETS, name, "multi-label")(root, split=split)


def get_segmentation_dataset(name: str, root: str | os.PathLike, *, split: str | None = None) -> SegmentationDataset:
    """A registered segmentation dataset (``voc``, ``voc2012``, ``coco``, ``coco2014``,
    ``coco2017``) read from ``root``."""
    return _lookup(SEGMENTATION_DATASETS, name, "segmentation")(root, split=split)

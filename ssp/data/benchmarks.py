"""The 11 CoOp benchmarks and a generic image-folder dataset.

``get_dataset(name, root)`` finds the dataset folder under ``root`` (the parent data folder such as
``$DATA`` holding ``dtd/``, ``caltech-101/``, ... or the dataset folder itself), reads the split
definition the way CoOp's readers do, and returns a :class:`~ssp.data.base.DatasetSplits`.
The expected layouts are documented in ``datasets/<name>.md`` at the repository root.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ssp._checks import option
from ssp.data.base import (
    DatasetNotFoundError,
    DatasetSplits,
    Sample,
    check_templates,
    clean_classname,
    list_images,
    read_split_file,
)

# ---------------------------------------------------------------------------------------------
# Prompt templates (CoOp, Zhou et al., IJCV 2022; ImageNet: the 7-template ensemble of Tip-Adapter)
# ---------------------------------------------------------------------------------------------
IMAGENET_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: CoOp's EuroSAT class names (folder name -> prompt name). The official split file already holds
#: the new names; the map is applied when a split file carries the raw folder names.
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@dataclass(frozen=True)
class Benchmark:
    name: str
    folders: tuple[str, ...]  # folder names under the parent data root; the first is CoOp's
    kind: str  # "json" | "imagenet" | "fgvc"
    image_dir: str  # relative to the dataset folder; "" = the folder itself
    split_name: str | None  # split JSON file name (kind "json")
    templates: tuple[str, ...]
    layout: str
    rename: dict[str, str] | None = None
    # entries that identify the dataset folder itself when root is that folder;
    # None = the split file and the image folder
    markers: tuple[str, ...] | None = None


def _json_layout(folder: str, image_dir: str, split_name: str, images: str) -> str:
    pad = "    "
    return (
        f"{folder}/   (give its parent folder or this folder as root)\n"
        f"{pad}{image_dir}/{images}\n{pad}{split_name}"
    )


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "imagenet", ("imagenet",), "imagenet", "images", None, IMAGENET_TEMPLATES,
            "imagenet/   (any folder name; give its parent folder or this folder as root)\n"
            "    classnames.txt               '<wnid> <class name>' per line, defines the class order\n"
            "    images/train/<wnid>/*.JPEG   train images (shots, carved validation)\n"
            "    images/val/<wnid>/*.JPEG     the official 50k validation images in class folders "
            "(used as test)",
            markers=("classnames.txt", "images/train"),
        ),
        Benchmark(
            "caltech101", ("caltech-101", "caltech101"), "json", "101_ObjectCategories",
            "split_zhou_Caltech101.json", ("a photo of a {}.",),
            _json_layout("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                         "<category>/image_XXXX.jpg"),
        ),
        Benchmark(
            "oxford_pets", ("oxford_pets",), "json", "images", "split_zhou_OxfordPets.json",
            ("a photo of a {}, a type of pet.",),
            _json_layout("oxford_pets", "images", "split_zhou_OxfordPets.json", "<Breed>_<n>.jpg"),
        ),
        Benchmark(
            "stanford_cars", ("stanford_cars",), "json", "", "split_zhou_StanfordCars.json",
            ("a photo of a {}.",),
            "stanford_cars/   (give its parent folder or this folder as root)\n"
            "    cars_train/*.jpg\n    cars_test/*.jpg\n    split_zhou_StanfordCars.json",
            markers=("split_zhou_StanfordCars.json", "cars_train"),
        ),
        Benchmark(
            "oxford_flowers", ("oxford_flowers",), "json", "jpg", "split_zhou_OxfordFlowers.json",
            ("a photo of a {}, a type of flower.",),
            _json_layout("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", "image_XXXXX.jpg"),
        ),
        Benchmark(
            "food101", ("food-101", "food101"), "json", "images", "split_zhou_Food101.json",
            ("a photo of {}, a type of food.",),
            _json_layout("food-101", "images", "split_zhou_Food101.json", "<class>/<id>.jpg"),
        ),
        Benchmark(
            "fgvc_aircraft", ("fgvc_aircraft",), "fgvc", "images", None,
            ("a photo of a {}, a type of aircraft.",),
            "fgvc_aircraft/   (the data/ folder of fgvc-aircraft-2013b, renamed)\n"
            "    images/<id>.jpg\n    variants.txt\n"
            "    images_variant_train.txt\n    images_variant_val.txt\n    images_variant_test.txt",
            markers=("variants.txt", "images_variant_train.txt"),
        ),
        Benchmark(
            "sun397", ("sun397",), "json", "SUN397", "split_zhou_SUN397.json",
            ("a photo of a {}.",),
            _json_layout("sun397", "SUN397", "split_zhou_SUN397.json", "<letter>/<category>/.../*.jpg"),
        ),
        Benchmark(
            "dtd", ("dtd",), "json", "images", "split_zhou_DescribableTextures.json",
            ("{} texture.",),
            _json_layout("dtd", "images", "split_zhou_DescribableTextures.json", "<class>/<class>_XXXX.jpg"),
        ),
        Benchmark(
            "eurosat", ("eurosat",), "json", "2750", "split_zhou_EuroSAT.json",
            ("a centered satellite photo of {}.",),
            _json_layout("eurosat", "2750", "split_zhou_EuroSAT.json", "<Class>/<Class>_<n>.jpg"),
            rename=EUROSAT_CLASSNAMES,
        ),
        Benchmark(
            "ucf101", ("ucf101",), "json", "UCF-101-midframes", "split_zhou_UCF101.json",
            ("a photo of a person doing {}.",),
            _json_layout("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
                         "<Action_Name>/v_<Action>_gXX_cXX.jpg"),
        ),
        Benchmark(
            "imagenet_v2", ("imagenetv2-matched-frequency-format-val", "imagenet_v2", "imagenetv2"), "imagenet_variant",
            "", None, IMAGENET_TEMPLATES,
            "imagenetv2-matched-frequency-format-val/   (the MatchedFrequency release; test only)\n"
            "    <class index 0..999>/*.jpeg   10,000 images, 10 per class",
            markers=("0", "999")),
        Benchmark(
            "imagenet_sketch", ("imagenet_sketch", "sketch", "imagenet-sketch"), "imagenet_variant", "", None,
            IMAGENET_TEMPLATES,
            "imagenet_sketch/   (or sketch/, the release's folder; test only)\n"
            "    <wnid>/*.JPEG   50,889 images of the 1,000 classes",
            markers=("n01440764",)),
        Benchmark(
            "imagenet_a", ("imagenet-a", "imagenet_a"), "imagenet_variant", "", None, IMAGENET_TEMPLATES,
            "imagenet-a/   (test only)\n"
            "    <wnid>/*.jpg   7,500 images of 200 classes (ssp/data/class_subsets/imagenet_a_wnids.txt)\n"
            "    classnames.txt   optional: '<wnid> <name>' lines, your own class list",
            markers=("n01498041", "classnames.txt")),
        Benchmark(
            "imagenet_r", ("imagenet-r", "imagenet_r"), "imagenet_variant", "", None, IMAGENET_TEMPLATES,
            "imagenet-r/   (test only)\n"
            "    <wnid>/*.jpg   30,000 images of 200 classes (ssp/data/class_subsets/imagenet_r_wnids.txt)\n"
            "    classnames.txt   optional: '<wnid> <name>' lines, your own class list",
            markers=("n01443537", "classnames.txt")),
    ]
}

IMAGEFOLDER_LAYOUT = (
    "<root>/\n"
    "    train/<class>/<image>     required\n"
    "    val/<class>/<image>       optional (without it, validation is carved from train)\n"
    "    test/<class>/<image>      required\n"
    "    templates.txt             optional: one prompt template with '{}' per line"
)

#: Other spellings of the benchmarks' names (lower case), the folder names of the published
#: Tip-Adapter / APE caches and configs included (``fgvc``, ``sun``, ``ucf``, ...): the one table.
ALIASES = {
    "caltech-101": "caltech101", "caltech": "caltech101", "pets": "oxford_pets", "oxfordpets": "oxford_pets",
    "cars": "stanford_cars", "stanfordcars": "stanford_cars", "flowers": "oxford_flowers",
    "flowers102": "oxford_flowers", "oxfordflowers": "oxford_flowers", "food-101": "food101", "food_101": "food101",
    "food": "food101", "aircraft": "fgvc_aircraft", "fgvcaircraft": "fgvc_aircraft", "fgvc": "fgvc_aircraft",
    "describabletextures": "dtd", "textures": "dtd", "sun": "sun397", "ucf": "ucf101", "eurosat_rgb": "eurosat",
    "image_folder": "imagefolder", "imagenetv2": "imagenet_v2", "imagenet-v2": "imagenet_v2",
    "imagenet-sketch": "imagenet_sketch", "imagenet-a": "imagenet_a", "imagenet-r": "imagenet_r",
}


def list_datasets() -> list[str]:
    """Registry names accepted by :func:`get_dataset`."""
    return list(BENCHMARKS) + ["imagefolder"]


def benchmark_templates(name: str) -> list[str]:
    """The prompt templates of a registered benchmark (CoOp, Zhou et al., IJCV 2022)."""
    key = canonical_name(name)
    if key == "imagefolder":
        return ["a photo of a {}."]
    return list(BENCHMARKS[key].templates)


def canonical_name(name: str) -> str:
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in BENCHMARKS and key != "imagefolder":
        import difflib

        spellings = list_datasets() + list(ALIASES)
        close = difflib.get_close_matches(key.replace("-", "_"), spellings, n=1, cutoff=0.6)
        hint = f"did you mean {ALIASES.get(close[0], close[0])!r}? " if close else ""
        raise ValueError(f"unknown dataset {name!r}; {hint}choose one of {list_datasets()}")
    return key


def _card(name: str) -> str:
    return f"See datasets/{name}.md in the ssp repository for how to obtain and lay out the data."


def _missing(what: str, path: Path | str, name: str, layout: str, hint: str = "") -> DatasetNotFoundError:
    hint = f"\n{hint}" if hint else ""
    return DatasetNotFoundError(
        f"{what} not found: {path}{hint}\nExpected layout for '{name}':\n{layout}\n{_card(name)}"
    )


# ---------------------------------------------------------------------------------------------
# Folder resolution
# ---------------------------------------------------------------------------------------------
def dataset_markers(b: Benchmark) -> tuple[str, ...]:
    if b.markers is not None:
        return b.markers
    return tuple(m for m in (b.split_name, b.image_dir) if m)


#: The one data-location rule: a data root holds the dataset folders directly or in this subfolder
#: (``$SSP_DATA_ROOT/coop/dtd``, the layout of the CoOp benchmarks beside other data).
COOP_SUBFOLDER = "coop"


def data_folders(root: Path) -> list[Path]:
    """The folders of ``root`` that may hold dataset folders: ``root`` and ``root/coop``."""
    sub = root / COOP_SUBFOLDER
    return [root, sub] if sub.is_dir() else [root]


def resolve_dataset_dir(b: Benchmark, root: Path) -> Path:
    """``root/<folder>`` (or ``root/coop/<folder>``) when it exists, else ``root`` itself when it
    holds the dataset's files or has the name of the dataset's folder (then its reader names what
    is missing in it)."""
    if not root.is_dir():
        raise _missing("data folder", root, b.name, b.layout)
    for base in data_folders(root):
        for folder in b.folders:
            if (base / folder).is_dir():
                return base / folder
    if any((root / m).exists() for m in dataset_markers(b)) or root.name in b.folders:
        return root  # a folder holding the dataset's files, or named as the dataset's folder is
    looked = ", ".join(str(base / f) for base in (root, root / COOP_SUBFOLDER) for f in b.folders)
    raise _missing(
        f"dataset folder for '{b.name}'", root, b.name, b.layout,
        f"Looked for {looked}, and for {', '.join(dataset_markers(b))} directly inside {root}.",
    )


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------
def _check_files_exist(ds: DatasetSplits, b_name: str, layout: str, image_dir: Path) -> None:
    missing = [
        s.path for split in (ds.train, ds.val or [], ds.test) for s in split if not os.path.isfile(s.path)
    ]
    if missing:
        examples = "\n    ".join(missing[:3])
        raise DatasetNotFoundError(
            f"{len(missing)} image(s) listed in the split are missing under {image_dir}, e.g.\n    "
            f"{examples}\nIs the image folder complete and at the expected place?\n"
            f"Expected layout for '{b_name}':\n{layout}\n{_card(b_name)}"
        )


def _read_json_benchmark(b: Benchmark, folder: Path, split_file: Path | None,
                         check_files: bool = True) -> DatasetSplits:
    image_dir = folder / b.image_dir if b.image_dir else folder
    split_path = Path(split_file) if split_file is not None else folder / b.split_name
    if not split_path.is_file():
        hint = "" if split_file is not None else (
            f"Download {b.split_name} (CoOp's split) and put it in {folder}, or pass "
            f"{option('split_file=PATH', '--split-file PATH')} to read it from elsewhere"
        )
        raise _missing("split file", split_path, b.name, b.layout, hint)
    if not image_dir.is_dir():
        raise _missing("image folder", image_dir, b.name, b.layout)
    ds = read_split_file(split_path, image_dir, name=b.name, templates=b.templates,
                         rename=b.rename, root=folder)
    if check_files:
        _check_files_exist(ds, b.name, b.layout, image_dir)
    return ds


def read_imagenet_classnames(path: str | Path) -> list[tuple[str, str]]:
    """``classnames.txt``: ``<wnid> <class name>`` per line -> [(wnid, name), ...] in file order."""
    path = Path(path)
    pairs: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}, line {n}: expected '<wnid> <class name>', got {line!r}")
            pairs.append((parts[0], parts[1].strip()))
    wnids = [w for w, _ in pairs]
    if len(set(wnids)) != len(wnids):
        dup = sorted({w for w in wnids if wnids.count(w) > 1})[:5]
        raise ValueError(f"{path}: duplicated folder names {dup}")
    if not pairs:
        raise ValueError(f"{path} lists no classes")
    return pairs


def _read_imagenet(b: Benchmark, folder: Path, split_file: Path | None,
                   check_files: bool = True) -> DatasetSplits:
    names_path = Path(split_file) if split_file is not None else folder / "classnames.txt"
    if not names_path.is_file():
        raise _missing("class-name file", names_path, b.name, b.layout,
                       "CoOp's classnames.txt holds CLIP's ImageNet class names.")
    pairs = read_imagenet_classnames(names_path)
    splits: dict[str, list[Sample]] = {}
    for split in ("train", "val"):
        split_dir = folder / b.image_dir / split
        if not split_dir.is_dir():
            raise _missing(f"ImageNet {split} folder", split_dir, b.name, b.layout)
        present = {e.name for e in os.scandir(split_dir) if e.is_dir()}
        absent = [w for w, _ in pairs if w not in present]
        if absent:
            hint = ""
            if not present:
                hint = ("It has no class folders: sort the images into one folder per wnid "
                        "(e.g. with the usual valprep.sh script for the official val set).")
            raise _missing(
                f"{len(absent)} class folder(s) listed in {names_path} (e.g. {absent[:3]})",
                split_dir, b.name, b.layout, hint,
            )
        extra = present.difference(w for w, _ in pairs)
        if extra:
            warnings.warn(
                f"{split_dir}: {len(extra)} class folder(s) not listed in {names_path} are ignored "
                f"(e.g. {sorted(extra)[:3]})",
                stacklevel=3,
            )
        samples: list[Sample] = []
        for label, (wnid, name) in enumerate(pairs):
            paths = list_images(split_dir / wnid)
            if not paths:
                raise DatasetNotFoundError(
                    f"no images in {split_dir / wnid}\nExpected layout for 'imagenet':\n{b.layout}\n{_card(b.name)}"
                )
            samples.extend(Sample(p, label, name) for p in paths)
        splits[split] = samples
    return DatasetSplits(
        name=b.name, root=folder, classnames=[name for _, name in pairs], templates=list(b.templates),
        train=splits["train"], val=None, test=splits["val"], class_ids=[w for w, _ in pairs],
    )


#: Test-only ImageNet variants (distribution shift): name -> (class list shipped in
#: ssp/data/class_subsets/, image count of the official release, class folders named by index).
IMAGENET_VARIANTS: dict[str, tuple[str, int, bool]] = {
    "imagenet_v2": ("imagenet_wnids.txt", 10_000, True),
    "imagenet_sketch": ("imagenet_wnids.txt", 50_889, False),
    "imagenet_a": ("imagenet_a_wnids.txt", 7_500, False),
    "imagenet_r": ("imagenet_r_wnids.txt", 30_000, False),
}
CLASS_SUBSETS = Path(__file__).resolve().parent / "class_subsets"


def shipped_class_ids(name: str) -> list[str]:
    """The WordNet ids of an ImageNet variant's classes, in label order (shipped with the package;
    the source of each list is named at the top of its file)."""
    path = CLASS_SUBSETS / IMAGENET_VARIANTS[name][0]
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _read_imagenet_variant(b: Benchmark, folder: Path, split_file: Path | None,
                           check_files: bool = True) -> DatasetSplits:
    """A test-only ImageNet variant: one folder of images per class (``<wnid>/``, or the class
    index ``0..999`` for ImageNet-V2). Classes: ``classnames.txt`` (``<wnid> <name>`` lines, in the
    folder or given as ``split_file``) when present, else the shipped list (names = the ids)."""
    names_path = Path(split_file) if split_file is not None else folder / "classnames.txt"
    _, _, by_index = IMAGENET_VARIANTS[b.name]
    if names_path.is_file():
        pairs = read_imagenet_classnames(names_path)
    else:
        if split_file is not None:
            raise _missing("class-name file", names_path, b.name, b.layout)
        pairs = [(w, w) for w in shipped_class_ids(b.name)]
    all_ids = shipped_class_ids("imagenet_v2") if by_index else []
    index_of = {w: i for i, w in enumerate(all_ids)}
    present = {e.name for e in os.scandir(folder) if e.is_dir()}
    dirs = [str(index_of.get(w, w)) if by_index else w for w, _ in pairs]
    absent = [(w, d) for (w, _), d in zip(pairs, dirs) if d not in present]
    if absent:
        raise _missing(f"{len(absent)} class folder(s) (e.g. {', '.join(d for _, d in absent[:3])})", folder / absent[0][1],
                       b.name, b.layout)
    test = []
    for label, ((wnid, name), d) in enumerate(zip(pairs, dirs)):
        paths = list_images(folder / d)
        if check_files and not paths:
            raise DatasetNotFoundError(f"no images in {folder / d}\nExpected layout for '{b.name}':\n{b.layout}\n"
                                       f"{_card(b.name)}")
        test.extend(Sample(p, label, name) for p in paths)
    return DatasetSplits(name=b.name, root=folder, classnames=[n for _, n in pairs], templates=list(b.templates),
                         train=[], val=None, test=test, class_ids=[w for w, _ in pairs])


def _read_fgvc(b: Benchmark, folder: Path, split_file: Path | None,
               check_files: bool = True) -> DatasetSplits:
    meta = Path(split_file) if split_file is not None else folder
    if not meta.is_dir():
        raise ValueError(
            f"for fgvc_aircraft, {option('split_file', '--split-file')} must be a folder holding variants.txt and "
            f"images_variant_{{train,val,test}}.txt; got {meta}"
        )
    variants_path = meta / "variants.txt"
    if not variants_path.is_file():
        raise _missing("variant list", variants_path, b.name, b.layout)
    with open(variants_path, encoding="utf-8") as f:
        classnames = [line.strip() for line in f if line.strip()]
    label_of = {c: i for i, c in enumerate(classnames)}
    image_dir = folder / b.image_dir
    if not image_dir.is_dir():
        raise _missing("image folder", image_dir, b.name, b.layout)
    splits: dict[str, list[Sample]] = {}
    for split in ("train", "val", "test"):
        list_path = meta / f"images_variant_{split}.txt"
        if not list_path.is_file():
            raise _missing("split list", list_path, b.name, b.layout)
        samples = []
        with open(list_path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.strip().split(" ", 1)
                if not parts[0]:
                    continue
                if len(parts) != 2 or parts[1].strip() not in label_of:
                    raise ValueError(
                        f"{list_path}, line {n}: expected '<image id> <variant from variants.txt>', "
                        f"got {line.strip()!r}"
                    )
                variant = parts[1].strip()
                samples.append(Sample(str((image_dir / f"{parts[0]}.jpg").absolute()),
                                      label_of[variant], variant))
        splits[split] = samples
    ds = DatasetSplits(name=b.name, root=folder, classnames=classnames, templates=list(b.templates),
                       train=splits["train"], val=splits["val"], test=splits["test"])
    if check_files:
        _check_files_exist(ds, b.name, b.layout, image_dir)
    return ds


_READERS: dict[str, Callable[..., DatasetSplits]] = {
    "json": _read_json_benchmark,
    "imagenet": _read_imagenet,
    "imagenet_variant": _read_imagenet_variant,
    "fgvc": _read_fgvc,
}


def _read_imagefolder(root: Path) -> DatasetSplits:
    """``root/{train,val,test}/<class>/*``; class order = sorted class folder names."""
    name = "imagefolder"
    if not root.is_dir():
        raise _missing("data folder", root, name, IMAGEFOLDER_LAYOUT)
    folders: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            if split == "val":
                continue
            raise _missing(f"'{split}' folder", split_dir, name, IMAGEFOLDER_LAYOUT)
        classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise _missing(f"class folders in {split_dir}", split_dir / "<class>", name, IMAGEFOLDER_LAYOUT)
        folders[split] = classes
    train_classes = folders["train"]
    for split, classes in folders.items():
        if classes != train_classes:
            only_train = sorted(set(train_classes) - set(classes))
            only_here = sorted(set(classes) - set(train_classes))
            raise ValueError(
                f"class folders of {root / split} differ from {root / 'train'}: "
                f"only in train: {only_train[:10]}, only in {split}: {only_here[:10]}. "
                "Every split must have the same class folders (labels are their sorted order)."
            )
    classnames = [clean_classname(c) for c in train_classes]
    splits: dict[str, list[Sample]] = {}
    for split in folders:
        samples: list[Sample] = []
        for label, cls in enumerate(train_classes):
            paths = list_images(root / split / cls)
            if not paths:  # one rule for every split: an empty class folder is never dropped silently
                raise DatasetNotFoundError(
                    f"no images in {root / split / cls} (every class folder of every split needs images: "
                    f"add some, or remove the class '{cls}' from every split)\n"
                    f"Expected layout for 'imagefolder':\n{IMAGEFOLDER_LAYOUT}\n{_card(name)}"
                )
            samples.extend(Sample(p, label, classnames[label]) for p in paths)
        splits[split] = samples
    tpl_file = root / "templates.txt"
    templates = ["a photo of a {}."]
    if tpl_file.is_file():
        with open(tpl_file, encoding="utf-8") as f:
            templates = check_templates([line.strip() for line in f if line.strip()], str(tpl_file))
    return DatasetSplits(
        name=name, root=root, classnames=classnames, templates=templates,
        train=splits["train"], val=splits.get("val"), test=splits["test"],
    )


def get_dataset(
    name: str,
    root: str | Path,
    *,
    split_file: str | Path | None = None,
    templates: Sequence[str] | None = None,
    check_files: bool = True,
) -> DatasetSplits:
    """Load a benchmark's train / val / test lists.

    Args:
        name: one of :func:`list_datasets` (a few aliases such as ``"flowers102"`` also work).
        root: the parent data folder (holding e.g. ``dtd/``) or the dataset folder itself.
        split_file: read the split definition from here instead of the dataset folder: the split
            JSON for the CoOp-split datasets, ``classnames.txt`` for ImageNet, the folder holding
            ``variants.txt`` and ``images_variant_*.txt`` for FGVC Aircraft. Not used by
            ``imagefolder``.
        templates: prompt templates (each with ``"{}"``) replacing the dataset's defaults.
        check_files: check that every image the split lists exists (``False``: read the split
            definition only, e.g. to draw or check a split manifest without the images).

    Raises:
        DatasetNotFoundError: a folder, split file or listed image is missing; the message names
            the path, the expected layout and the ``datasets/<name>.md`` card.
    """
    key = canonical_name(name)
    root = Path(root).expanduser()
    if key == "imagefolder":
        if split_file is not None:
            raise ValueError("imagefolder takes its splits from the train/val/test folders; drop "
                             f"{option('split_file', '--split-file')}")
        ds = _read_imagefolder(root)
    else:
        b = BENCHMARKS[key]
        folder = resolve_dataset_dir(b, root)
        ds = _READERS[b.kind](b, folder, Path(split_file).expanduser() if split_file is not None else None,
                              check_files=check_files)
    if templates is not None:
        ds.templates = check_templates(templates, "templates argument")
    return ds

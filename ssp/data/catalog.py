"""Where each benchmark comes from: archives, checksums, layout moves, CoOp split files, manual steps.

One :class:`CatalogEntry` per benchmark of :mod:`ssp.data.benchmarks`. An entry lists the
archives that a library already in our dependencies knows how to fetch (URLs and md5 as pinned by
``torchvision.datasets``), how their contents move into the CoOp layout, the CoOp split file
(file name, size and sha256 of the official file, its public links), and, where no archive can be
fetched (licence, host gone), the manual steps and the layouts that ``ssp-data verify`` accepts.

Seven split files ship with the package, gzipped, in ``ssp/data/splits/`` (credit and digests in
its ``SOURCES.md``): ``ssp-data download`` copies them without any network and checks them against
the pinned sha256 (:func:`packaged_split_file`); those of Food-101 and SUN397 are fetched.

Mirrors: set ``$SSP_DATA_MIRROR`` (or pass ``mirror=`` / ``--mirror``) to a base URL that serves
every file under its plain file name (``<mirror>/dtd-r1.0.1.tar.gz``,
``<mirror>/split_zhou_DescribableTextures.json``); it replaces the table's URLs, checksums stay.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from ssp.data.benchmarks import canonical_name, list_datasets

#: Environment variable holding a mirror base URL that replaces every URL of the table.
MIRROR_ENV = "SSP_DATA_MIRROR"
#: The CoOp page listing the split files (and the source of their links below).
COOP_DATASETS_PAGE = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
#: Credit for the split files (CoOp, MIT licence).
SPLIT_CREDIT = ("CoOp split files by Kaiyang Zhou et al. (Learning to Prompt for Vision-Language Models, "
                "IJCV 2022), https://github.com/KaiyangZhou/CoOp, MIT licence")
#: Folder inside the package holding the shipped split files (looked up before any download).
PACKAGED_SPLITS = Path(__file__).resolve().parent / "splits"


def drive_urls(file_id: str) -> tuple[str, ...]:
    """A Google Drive file's direct-download URL (the one a script can fetch)."""
    return (f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t",)


def drive_page(file_id: str) -> str:
    """The Drive page a person opens in a browser."""
    return f"https://drive.google.com/file/d/{file_id}/view?usp=sharing"


@dataclass(frozen=True)
class Resource:
    """One file to fetch and how its contents enter the dataset folder.

    ``moves`` maps a path inside the extracted archive (``"dtd/images"``; ``"data/*"`` = every
    entry of ``data``) to a path inside the dataset folder (``"images"``; ``""`` = the folder
    itself). A file that is not an archive (``extract=False``) is moved as ``moves[0][1]``.
    ``inner`` names an archive found inside the archive (anywhere, by file name) that holds the
    images and is extracted in turn (Caltech101's zip holds ``101_ObjectCategories.tar.gz``).
    """

    filename: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract: bool = True
    inner: str | None = None
    moves: tuple[tuple[str, str], ...] = ()
    pinned_by: str = "torchvision.datasets"


@dataclass(frozen=True)
class SplitFile:
    """A CoOp split file: name, the official file's size and sha256 (``None`` when the package
    has no digest for it), its public links, and how the split was made."""

    filename: str
    drive_id: str | None
    sha256: str | None
    size: int | None
    counts: tuple[int, int, int, int] | None  # train, val, test, classes of the official file
    made: str

    @property
    def urls(self) -> tuple[str, ...]:
        return drive_urls(self.drive_id) if self.drive_id else ()

    @property
    def page(self) -> str:
        return drive_page(self.drive_id) if self.drive_id else COOP_DATASETS_PAGE


@dataclass(frozen=True)
class CatalogEntry:
    """How to obtain one benchmark. ``resources`` empty = the images need manual steps."""

    name: str
    folder: str
    resources: tuple[Resource, ...]
    split: SplitFile | None
    split_note: str
    manual: str = ""
    alternatives: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fetchable(self) -> bool:
        return bool(self.resources)


_VGG = "https://www.robots.ox.ac.uk/~vgg/data"

_CATALOG: dict[str, CatalogEntry] = {s.name: s for s in [
    CatalogEntry(
        "dtd", "dtd",
        (Resource("dtd-r1.0.1.tar.gz", (f"{_VGG}/dtd/download/dtd-r1.0.1.tar.gz",),
                  md5="fff73e5086ae6bdbea199a49dfb8a4c1",
                  moves=(("dtd/images", "images"), ("dtd/imdb", "imdb"), ("dtd/labels", "labels"))),),
        SplitFile("split_zhou_DescribableTextures.json", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x",
                  "f26ebeccd2b58e68d70f07a0dc39fe49bf7b69024bac34396b954dfd87969c38", 563702,
                  (2820, 1128, 1692, 47), "CoOp: each class's images split 50 % / 20 % / 30 %"),
        "official CoOp split, sha256 pinned",
    ),
    CatalogEntry(
        "oxford_pets", "oxford_pets",
        (Resource("images.tar.gz", (f"{_VGG}/pets/data/images.tar.gz",), md5="5c4f3ee8e5d25df40f4fd59a7f44e54c",
                  moves=(("images", "images"),)),
         Resource("annotations.tar.gz", (f"{_VGG}/pets/data/annotations.tar.gz",),
                  md5="95a8c909bbe2e81eed6a22bccdf3f68f", moves=(("annotations", "annotations"),))),
        SplitFile("split_zhou_OxfordPets.json", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs",
                  "d7f3ffe65b3919f95132e51422894ae18686b83c331fd8c0adcdc3dc2de6301e", 724217,
                  (2944, 736, 3669, 37), "CoOp: the official trainval list split 80/20 into train/val, the "
                                         "official test list"),
        "official CoOp split, sha256 pinned",
    ),
    CatalogEntry(
        "oxford_flowers", "oxford_flowers",
        (Resource("102flowers.tgz", (f"{_VGG}/flowers/102/102flowers.tgz",), md5="52808999861908f626f3c1f4e79d11fa",
                  moves=(("jpg", "jpg"),)),
         Resource("imagelabels.mat", (f"{_VGG}/flowers/102/imagelabels.mat",), md5="e0620be6f572b9609742df49c70aed4d",
                  extract=False, moves=(("imagelabels.mat", "imagelabels.mat"),))),
        SplitFile("split_zhou_OxfordFlowers.json", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT",
                  "2f50c42fc1a17ca13c271cb4269b1347bdb43d2be672e34f74a4e4cbfbcca794", 771139,
                  (4093, 1633, 2463, 102), "CoOp: each class's images split 50 % / 20 % / 30 %"),
        "official CoOp split, sha256 pinned",
    ),
    CatalogEntry(
        "food101", "food-101",
        (Resource("food-101.tar.gz", ("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",),
                  md5="85eeb15f3717b99a5da872d97d918f87",
                  moves=(("food-101/images", "images"), ("food-101/meta", "meta"))),),
        SplitFile("split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl", None, None,
                  (50500, 20200, 30300, 101), "CoOp: each class's 1,000 images split 50 % / 20 % / 30 % "
                                              "(not the official 750/250 split)"),
        "CoOp split fetched from CoOp's link; the package pins no digest for it (its sha256 is recorded "
        "at download and in every run)",
    ),
    CatalogEntry(
        "eurosat", "eurosat",
        (Resource("EuroSAT.zip", ("https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                                  "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",),
                  md5="c8fa014336c82ac7804f0398fcb19387", moves=(("2750", "2750"),)),),
        SplitFile("split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o",
                  "541503a77d0b26b735d85ec7a3e672804fe0aa466c2e5f07da772cc6c0af8ad2", 3006492,
                  (13500, 5400, 8100, 10), "CoOp: 13,500 / 5,400 / 8,100 images drawn per class"),
        "official CoOp split, sha256 pinned",
    ),
    CatalogEntry(
        "fgvc_aircraft", "fgvc_aircraft",
        (Resource("fgvc-aircraft-2013b.tar.gz",
                  (f"{_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",),
                  moves=(("fgvc-aircraft-2013b/data/*", ""),), pinned_by="nobody (torchvision has no checksum)"),),
        None,
        "no CoOp file: the archive's own images_variant_{train,val,test}.txt lists (3,334 / 3,333 / 3,333), "
        "as CoOp reads them",
    ),
    CatalogEntry(
        "sun397", "sun397",
        (Resource("SUN397.tar.gz", ("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",),
                  md5="8ca2778205c41d23104230ba66911c7a", moves=(("SUN397", "SUN397"),)),),
        SplitFile("split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq", None, None,
                  (15880, 3970, 19850, 397), "CoOp: partition Training_01 split 80/20 into train/val, "
                                             "Testing_01 as test"),
        "CoOp split fetched from CoOp's link; the package pins no digest for it (its sha256 is recorded "
        "at download and in every run)",
    ),
    CatalogEntry(
        "caltech101", "caltech-101",
        (Resource("caltech-101.zip", ("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",),
                  md5="3138e1922a9193bfa496528edbbc45d0", inner="101_ObjectCategories.tar.gz",
                  moves=(("101_ObjectCategories", "101_ObjectCategories"),)),),
        SplitFile("split_zhou_Caltech101.json", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN",
                  "52ce83205ff8ff8a1a18119aad6376120ae35c36e783a984bc560cbf10e73fa5", 809184,
                  (4128, 1649, 2465, 100), "CoOp: 100 classes (BACKGROUND_Google and Faces_easy dropped), "
                                           "each class split 50 % / 20 % / 30 %"),
        "official CoOp split, sha256 pinned",
    ),
    CatalogEntry(
        "stanford_cars", "stanford_cars", (),
        SplitFile("split_zhou_StanfordCars.json", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT",
                  "40acee7aa65c8e4727a32d90e884b7c3f8960b523422317e163f7af65432959d", 1855652,
                  (6509, 1635, 8041, 196), "CoOp: the official train list split 80/20 into train/val, the "
                                           "official test list"),
        "official CoOp split, sha256 pinned",
        manual=(
            "The images' original host (ai.stanford.edu/~jkrause/car196) is gone, and torchvision can no longer "
            "download them. Get cars_train/ (8,144 images 00001.jpg..08144.jpg) and cars_test/ (8,041 images "
            "00001.jpg..08041.jpg) from a copy that keeps the original file names, and put both folders in "
            "{folder}/ beside the split file (move them, or link them: ln -s /path/to/cars_train {folder}/)."),
        alternatives=(
            "Kaggle 'rickyyyyyyy/torchvision-stanford-cars' (made for torchvision): stanford_cars/{cars_train, "
            "cars_test, devkit, cars_test_annos_withlabels.mat}; move cars_train/ and cars_test/ into {folder}/.",
            "Kaggle 'jessicali9530/stanford-cars-dataset': the folders are doubled (cars_train/cars_train/*.jpg, "
            "cars_test/cars_test/*.jpg); move the inner folders up: mv cars_train/cars_train {folder}/cars_train "
            "(same for cars_test). `ssp-data verify` names this layout when it finds it.",
            "Copies sorted into class folders (train/<class>/<id>.jpg, e.g. 'stanford-cars-by-classes-folder') "
            "must be flattened back into cars_train/ and cars_test/ with the original file names; "
            "`ssp-data verify` then checks every image the split lists.",
        ),
    ),
    CatalogEntry(
        "ucf101", "ucf101", (),
        SplitFile("split_zhou_UCF101.json", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y",
                  "d78cb834f7c5792ceaff2c5ee2d7c76a9e4086e48a3a6b01232989d29cbefdd8", 1557485,
                  (7639, 1898, 3783, 101), "CoOp: official split 1, its train list split 80/20 into train/val; "
                                           "one image per video (the middle frame)"),
        "official CoOp split, sha256 pinned",
        manual=(
            "CoOp's middle frames are one archive, UCF-101-midframes.zip, on Google Drive: "
            + drive_page("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O")
            + " (open it in a browser; Drive asks to confirm large files). Extract it into {folder}/ so that "
              "{folder}/UCF-101-midframes/<Action_Name>/v_<Action>_gXX_cXX.jpg exist. No library fetches it."),
        alternatives=(
            "From the videos (https://www.crcv.ucf.edu/data/UCF101.php): save each video's middle frame as "
            "UCF-101-midframes/<Action_Name>/<video name>.jpg, where <Action_Name> splits the CamelCase action "
            "with underscores (ApplyEyeMakeup -> Apply_Eye_Makeup); `ssp-data verify` lists any frame the split "
            "names but the folder lacks.",
        ),
    ),
    CatalogEntry(
        "imagenet", "imagenet", (), None,
        "no split file: train images give the shots (validation is carved from the train images that are "
        "not shots), the official 50,000 validation images are the test set; classnames.txt (CoOp's copy of "
        "CLIP's class names) sets the class order",
        manual=(
            "ImageNet's licence requires an account: download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
            "from https://image-net.org (or use a copy you already have). Put the train images in "
            "{folder}/images/train/<wnid>/*.JPEG and the validation images sorted into "
            "{folder}/images/val/<wnid>/*.JPEG (the official validation archive is flat: the widely used "
            "valprep.sh script sorts it). Links to an existing copy work: ln -s /path/train {folder}/images/train. "
            "Then put CoOp's classnames.txt in {folder}/ (" + drive_page("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF") + ")."),
        alternatives=(
            "torchvision.datasets.ImageNet's folder (train/<wnid>/, val/<wnid>/ after it parsed the devkit): "
            "link its train/ and val/ as {folder}/images/train and {folder}/images/val.",
        ),
    ),
    CatalogEntry(
        "imagenet_v2", "imagenetv2-matched-frequency-format-val",
        (Resource("imagenetv2-matched-frequency.tar.gz",
                  ("https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz",),
                  moves=(("imagenetv2-matched-frequency-format-val/*", ""),),
                  pinned_by="nobody (the release publishes no checksum; the image count is checked)"),),
        None,
        "no split file, test only (distribution shift): the MatchedFrequency release, 10 images per class, class folders "
        "named by ImageNet class index 0..999 (ssp/data/class_subsets/imagenet_wnids.txt maps them to ids)",
    ),
    CatalogEntry(
        "imagenet_sketch", "imagenet_sketch", (), None,
        "no split file, test only (distribution shift): 50,889 sketches of the 1,000 classes, one folder per wnid",
        manual=(
            "ImageNet-Sketch (Wang et al., NeurIPS 2019, https://github.com/HaohanWang/ImageNet-Sketch) is "
            "distributed through Google Drive and Kaggle ('wanghaohan/imagenetsketch'), which need a browser or "
            "an account. Download ImageNet-Sketch.zip and extract it so that {folder}/<wnid>/*.JPEG exist (the "
            "archive's sketch/ folder, moved or linked as {folder})."),
        alternatives=("Hugging Face 'imagenet_sketch' (songweig/imagenet_sketch) holds the same images as parquet "
                      "files: write each to {folder}/<wnid>/<name>.JPEG.",),
    ),
    CatalogEntry(
        "imagenet_a", "imagenet-a",
        (Resource("imagenet-a.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",), moves=(("imagenet-a/*", ""),),
                  pinned_by="nobody (the release publishes no checksum; the image count is checked)"),),
        None,
        "no split file, test only (distribution shift): 7,500 natural adversarial images of 200 ImageNet classes "
        "(class list shipped: ssp/data/class_subsets/imagenet_a_wnids.txt)",
    ),
    CatalogEntry(
        "imagenet_r", "imagenet-r",
        (Resource("imagenet-r.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",), moves=(("imagenet-r/*", ""),),
                  pinned_by="nobody (the release publishes no checksum; the image count is checked)"),),
        None,
        "no split file, test only (distribution shift): 30,000 renditions of 200 ImageNet classes "
        "(class list shipped: ssp/data/class_subsets/imagenet_r_wnids.txt)",
    ),
]}


def catalog_entry(name: str) -> CatalogEntry:
    """The catalog entry of a registered benchmark (aliases accepted, as by ``get_dataset``)."""
    key = canonical_name(name)
    if key not in _CATALOG:
        raise ValueError(f"{name!r} is not downloadable: it is your own data; see datasets/imagefolder.md")
    return _CATALOG[key]


def list_sources() -> list[CatalogEntry]:
    """Every benchmark's catalog entry, in the registry's order."""
    return [_CATALOG[n] for n in list_datasets() if n in _CATALOG]


def mirror_url(mirror: str | None = None) -> str | None:
    """The mirror base URL: ``mirror`` when given, else ``$SSP_DATA_MIRROR``, else ``None``. A local
    folder becomes its ``file://`` URL; anything else that is not an http(s)/ftp/file URL is a
    ``ValueError`` saying what a mirror is."""
    value = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if not value:
        return None
    if "://" not in value:
        if Path(value).expanduser().is_dir():
            return Path(value).expanduser().resolve().as_uri()
        where = "--mirror" if mirror is not None else f"${MIRROR_ENV}"
        raise ValueError(f"{where} {value!r} is neither a URL nor a folder: give the base URL of a server (or a "
                         "local folder) holding every file under its own name, e.g. https://host/ssp-data or "
                         "/mnt/mirror (see `ssp-data list` for the file names)")
    if value.split("://", 1)[0].lower() not in ("http", "https", "ftp", "file"):
        raise ValueError(f"mirror {value!r}: only http://, https://, ftp:// and file:// URLs (or a local folder) "
                         "can be fetched")
    return value.rstrip("/")


def resource_urls(filename: str, urls: tuple[str, ...], mirror: str | None = None) -> tuple[str, ...]:
    """The URLs to try for one file: the mirror's ``<base>/<filename>`` alone when a mirror is set."""
    base = mirror_url(mirror)
    return (f"{base}/{filename}",) if base else urls


def packaged_split_file(filename: str) -> Path | None:
    """A split file vendored in ``ssp/data/splits/`` (plain or ``.gz``), if the package has one."""
    for candidate in (PACKAGED_SPLITS / filename, PACKAGED_SPLITS / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def official_classnames(name: str) -> list[str] | None:
    """The class names, in label order, of a benchmark whose official CoOp split file ships with
    the package (read the way the image datasets read it: renames applied, names cleaned);
    ``None`` for any other dataset. Lets runs on feature caches, which hold labels only, name
    their classes."""
    import gzip
    import json

    from ssp.data.base import Sample, classnames_from_samples, clean_classname
    from ssp.data.benchmarks import BENCHMARKS

    try:
        bench = BENCHMARKS[canonical_name(name)]
    except (KeyError, ValueError):
        return None
    path = packaged_split_file(bench.split_name) if bench.kind == "json" and bench.split_name else None
    if path is None:
        return None
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
        content = json.load(f)
    rename = bench.rename or {}
    splits = {k: [Sample(str(rel), int(label), clean_classname(rename.get(c, c))) for rel, label, c in content[k]]
              for k in ("train", "val", "test")}
    return classnames_from_samples(splits, str(path))


def official_split(filename: str) -> SplitFile | None:
    """The table entry of a split file, by file name (``None`` for an unknown name)."""
    for source in _CATALOG.values():
        if source.split is not None and source.split.filename == filename:
            return source.split
    return None


#: Class counts of the benchmarks whose catalog entry has no split file with counts.
_CLASS_COUNTS = {"fgvc_aircraft": 100, "imagenet": 1000}


def benchmark_class_count(name: str) -> int | None:
    """The number of classes of a benchmark under the CoOp protocol (``None``: not a benchmark)."""
    try:
        entry = catalog_entry(name)
    except ValueError:
        return None
    if entry.split is not None and entry.split.counts is not None:
        return entry.split.counts[3]
    return _CLASS_COUNTS.get(entry.name)

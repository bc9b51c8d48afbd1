"""The download table: one source per benchmark, checksums as torchvision pins them, split digests."""
from __future__ import annotations

import hashlib
import inspect
import json

import pytest

from ssp.data import list_datasets
from ssp.data.catalog import (
    catalog_entry,
    list_sources,
    mirror_url,
    packaged_split_file,
    resource_urls,
)


def test_every_benchmark_has_a_source_and_every_source_a_plan():
    names = [s.name for s in list_sources()]
    assert names == [n for n in list_datasets() if n != "imagefolder"]
    for s in list_sources():
        if s.fetchable:
            assert all(r.moves and r.urls for r in s.resources), s.name
        else:
            assert s.manual and "{folder}" in s.manual and s.alternatives, s.name
        assert s.split is not None or "no" in s.split_note, s.name
    assert not catalog_entry("stanford_cars").fetchable  # the host is gone
    with pytest.raises(ValueError, match="not downloadable"):
        catalog_entry("imagefolder")


def test_checksums_and_urls_are_the_ones_torchvision_pins():
    from torchvision import datasets as tv

    def resource(name, filename):
        return next(r for r in catalog_entry(name).resources if r.filename == filename)

    assert (resource("dtd", "dtd-r1.0.1.tar.gz").urls[0], resource("dtd", "dtd-r1.0.1.tar.gz").md5) == (
        tv.DTD._URL, tv.DTD._MD5)
    assert (resource("food101", "food-101.tar.gz").urls[0], resource("food101", "food-101.tar.gz").md5) == (
        tv.Food101._URL, tv.Food101._MD5)
    assert (resource("sun397", "SUN397.tar.gz").urls[0], resource("sun397", "SUN397.tar.gz").md5) == (
        tv.SUN397._DATASET_URL, tv.SUN397._DATASET_MD5)
    pets = {url.rsplit("/", 1)[1]: (url, md5) for url, md5 in tv.OxfordIIITPet._RESOURCES}
    for filename, (url, md5) in pets.items():
        assert (resource("oxford_pets", filename).urls[0], resource("oxford_pets", filename).md5) == (url, md5)
    for key in ("image", "label"):
        filename, md5 = tv.Flowers102._file_dict[key]
        assert resource("oxford_flowers", filename).md5 == md5
        assert resource("oxford_flowers", filename).urls[0] == tv.Flowers102._download_url_prefix + filename
    assert resource("fgvc_aircraft", "fgvc-aircraft-2013b.tar.gz").urls[0] == tv.FGVCAircraft._URL
    for cls, name, filename in ((tv.EuroSAT, "eurosat", "EuroSAT.zip"), (tv.Caltech101, "caltech101", "caltech-101.zip")):
        code = inspect.getsource(cls.download)
        r = resource(name, filename)
        assert r.urls[0] in code and r.md5 in code, name


def test_pinned_split_digests_match_the_official_files(data_root):
    folder = data_root / "splits"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    checked = 0
    for s in list_sources():
        path = folder / s.split.filename if s.split is not None else None
        if path is None or not path.is_file():
            continue
        data = path.read_bytes()
        assert s.split.sha256 == hashlib.sha256(data).hexdigest() and s.split.size == len(data), s.name
        content = json.loads(data)
        classes = len({e[1] for part in content.values() for e in part})
        assert s.split.counts == (len(content["train"]), len(content["val"]), len(content["test"]), classes)
        checked += 1
    assert checked == 7


def test_mirror_replaces_urls_and_the_package_folder_is_looked_up(monkeypatch):
    urls = ("https://host/a.tar.gz",)
    monkeypatch.delenv("SSP_DATA_MIRROR", raising=False)
    assert resource_urls("a.tar.gz", urls) == urls and mirror_url() is None
    monkeypatch.setenv("SSP_DATA_MIRROR", "http://127.0.0.1:8000/files/")
    assert resource_urls("a.tar.gz", urls) == ("http://127.0.0.1:8000/files/a.tar.gz",)
    assert resource_urls("a.tar.gz", urls, "http://other") == ("http://other/a.tar.gz",)
    assert packaged_split_file("split_zhou_DescribableTextures.json").name == "split_zhou_DescribableTextures.json.gz"
    assert packaged_split_file("split_zhou_SUN397.json") is None  # large: fetched, not shipped


def test_the_shipped_split_files_are_the_official_ones():
    """Seven gzipped CoOp split files ship in the package: each decompresses to the pinned sha256,
    holds the official counts, and is credited in SOURCES.md."""
    import gzip
    import hashlib
    import json

    from ssp.data.catalog import PACKAGED_SPLITS, list_sources

    shipped = sorted(p.name for p in PACKAGED_SPLITS.glob("*.json.gz"))
    assert len(shipped) == 7
    credit = (PACKAGED_SPLITS / "SOURCES.md").read_text()
    assert "MIT" in credit and "github.com/KaiyangZhou/CoOp" in credit
    by_file = {s.split.filename: s.split for s in list_sources() if s.split is not None}
    for name in shipped:
        split = by_file[name[:-3]]
        data = gzip.decompress((PACKAGED_SPLITS / name).read_bytes())
        assert hashlib.sha256(data).hexdigest() == split.sha256 and len(data) == split.size, name
        content = json.loads(data)
        counts = tuple(len(content[k]) for k in ("train", "val", "test"))
        assert counts + (len({e[1] for e in content["train"]}),) == split.counts, name
        assert split.sha256 in credit, name


def test_official_classnames_are_the_ones_the_image_datasets_read(data_root):
    """The names a cache run gets for its classes are, in label order, those an image run of the
    same benchmark reads from the official split file (renames and cleaning included)."""
    from ssp.data import read_split_file
    from ssp.data.benchmarks import BENCHMARKS
    from ssp.data.catalog import official_classnames

    assert official_classnames("imagenet") is None and official_classnames("food101") is None  # no shipped file
    assert official_classnames("no-such-dataset") is None
    folder = data_root / "splits"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    checked = 0
    for bench in BENCHMARKS.values():
        path = folder / str(bench.split_name)
        if bench.kind == "json" and path.is_file():
            expected = read_split_file(path, folder, rename=bench.rename).classnames
            assert official_classnames(bench.name) == expected, bench.name
            checked += 1
    assert checked == 7 and len(official_classnames("stanford_cars")) == 196

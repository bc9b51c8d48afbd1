"""ssp.data.download against a local HTTP server (127.0.0.1 only): layout, checksum, resume, no-op."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from _local_http import (
    LocalFiles,
    dtd_files,
    fake_dtd,
    jpeg_bytes,
    pin,
    tar_gz,
    zip_bytes,
)

from ssp.data import get_dataset
from ssp.data.download import (
    DOWNLOADS,
    MARKER,
    DownloadError,
    download_dataset,
    extract_archive,
    fetch,
)


def _leftovers(root: Path) -> list[str]:
    """Partial downloads, archives and staging folders left under ``root``."""
    downloads = root / DOWNLOADS
    return sorted(p.name for p in downloads.iterdir()) if downloads.is_dir() else []


def test_dtd_is_downloaded_laid_out_and_a_second_call_does_nothing(tmp_path, monkeypatch):
    files = dtd_files()
    pin(monkeypatch, "dtd", files)
    lines = []
    with LocalFiles(files) as server:
        result = download_dataset("dtd", tmp_path, mirror=server.url, progress=False, echo=lines.append)
        assert result.status == "ready", result.message
        folder = tmp_path / "dtd"
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["images", "imdb", "labels", "split_zhou_DescribableTextures.json", MARKER])
        ds = get_dataset("dtd", tmp_path)
        assert (ds.n_classes, len(ds.train), len(ds.val), len(ds.test)) == (3, 6, 3, 3)
        assert f"ready at {folder}" in result.message and "12 images" not in result.message
        assert result.n_files == 12 + 2 + 2 and result.n_bytes > 0
        record = json.loads((folder / MARKER).read_text())
        assert record["files"]["dtd-r1.0.1.tar.gz"]["md5"] == hashlib.md5(files["dtd-r1.0.1.tar.gz"]).hexdigest()
        assert _leftovers(tmp_path) == []  # archive removed once laid out, no staging, no .part
        assert any("split file split_zhou_DescribableTextures.json downloaded" in n for n in result.notes)

        n_requests = len(server.requests)
        again = download_dataset("dtd", tmp_path, mirror=server.url, progress=False, echo=lines.append)
        assert again.status == "ready" and "already downloaded" in again.message
        assert len(server.requests) == n_requests  # no network at all


def test_checksum_mismatch_is_clear_and_leaves_nothing_behind(tmp_path, monkeypatch):
    files = dtd_files()
    pin(monkeypatch, "dtd", files)
    served = dict(files, **{"dtd-r1.0.1.tar.gz": fake_dtd((1, 1, 1))[0]})  # the host serves another file
    with LocalFiles(served) as server:
        with pytest.raises(DownloadError, match=r"checksum mismatch for dtd-r1\.0\.1\.tar\.gz.*md5 .*, expected "
                                                r".*nothing was extracted"):
            download_dataset("dtd", tmp_path, mirror=server.url, progress=False, echo=lambda _: None)
    assert not (tmp_path / "dtd" / "images").exists()
    assert _leftovers(tmp_path) == []  # the bad file and its .part are gone, no staging folder


def test_interrupted_download_resumes_with_a_range_request(tmp_path):
    data = bytes(range(256)) * 400
    md5 = hashlib.md5(data).hexdigest()
    with LocalFiles({"big.bin": data}, cut={"big.bin": 30_000}) as server:
        with pytest.raises(DownloadError, match=r"interrupted after 30000 .*rerun the same command to resume"):
            fetch(server.url + "/big.bin", tmp_path / "big.bin", md5=md5, progress=False, retries=0)
        assert (tmp_path / "big.bin.part").stat().st_size == 30_000
        path = fetch(server.url + "/big.bin", tmp_path / "big.bin", md5=md5, progress=False, retries=0)
        assert path.read_bytes() == data and not (tmp_path / "big.bin.part").exists()
        assert server.requests == [("big.bin", None), ("big.bin", "bytes=30000-")]


def test_a_dropped_connection_is_resumed_within_the_same_call(tmp_path):
    data = b"0123456789" * 5000
    with LocalFiles({"f.bin": data}, cut={"f.bin": 12_345}) as server:
        fetch(server.url + "/f.bin", tmp_path / "f.bin", sha256=hashlib.sha256(data).hexdigest(), progress=False)
        assert (tmp_path / "f.bin").read_bytes() == data
        assert server.requests[-1] == ("f.bin", "bytes=12345-")


def test_a_host_without_range_support_restarts_from_zero(tmp_path):
    data = b"abc" * 10_000
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes that are not the file's")
    with LocalFiles({"f.bin": data}, ranges=False) as server:
        fetch(server.url + "/f.bin", tmp_path / "f.bin", md5=hashlib.md5(data).hexdigest(), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_a_web_page_instead_of_the_file_is_refused(tmp_path):
    with LocalFiles({"s.json": b"<html>quota exceeded</html>"}, content_types={"s.json": "text/html"}) as server:
        with pytest.raises(DownloadError, match="web page instead of the file"):
            fetch(server.url + "/s.json", tmp_path / "s.json", progress=False, retries=0)
    assert not (tmp_path / "s.json").exists()


def test_archive_members_outside_the_target_are_refused(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(tar_gz({"../escape.txt": b"x"}))
    with pytest.raises(DownloadError, match="refusing this archive"):
        extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    badzip = tmp_path / "bad.zip"
    badzip.write_bytes(zip_bytes({"../../escape.txt": b"x"}))
    with pytest.raises(DownloadError, match="outside"):
        extract_archive(badzip, tmp_path / "out2")


def test_a_zip_with_an_inner_archive_caltech101(tmp_path, monkeypatch):
    """caltech-101.zip holds caltech-101/101_ObjectCategories.tar.gz, which holds the images."""
    inner = tar_gz({"101_ObjectCategories/accordion/image_0001.jpg": jpeg_bytes((1, 2, 3)),
                    "101_ObjectCategories/accordion/image_0002.jpg": jpeg_bytes((4, 5, 6)),
                    "101_ObjectCategories/airplanes/image_0001.jpg": jpeg_bytes((7, 8, 9))})
    archive = zip_bytes({"caltech-101/101_ObjectCategories.tar.gz": inner, "caltech-101/Annotations.tar": b"x",
                         "__MACOSX/caltech-101/._101_ObjectCategories.tar.gz": b"junk"})
    split = {"train": [["accordion/image_0001.jpg", 0, "accordion"], ["airplanes/image_0001.jpg", 1, "airplane"]],
             "val": [["accordion/image_0002.jpg", 0, "accordion"]], "test": [["airplanes/image_0001.jpg", 1, "airplane"]]}
    files = {"caltech-101.zip": archive, "split_zhou_Caltech101.json": json.dumps(split).encode()}
    pin(monkeypatch, "caltech101", files)
    with LocalFiles(files) as server:
        result = download_dataset("caltech101", tmp_path, mirror=server.url, progress=False, echo=lambda _: None)
    assert result.status == "ready", result.message
    assert sorted(p.name for p in (tmp_path / "caltech-101").iterdir() if p.name != MARKER) == [
        "101_ObjectCategories", "split_zhou_Caltech101.json"]
    assert get_dataset("caltech101", tmp_path).classnames == ["accordion", "airplane"]


def test_fgvc_children_of_data_become_the_dataset_folder(tmp_path, monkeypatch):
    lists = {"fgvc-aircraft-2013b/data/variants.txt": b"707-320\nA300B4\n"}
    for part, ids in (("train", ("0001", "0002")), ("val", ("0003",)), ("test", ("0004",))):
        lists[f"fgvc-aircraft-2013b/data/images_variant_{part}.txt"] = "".join(
            f"{i} {'707-320' if i in ('0001', '0003') else 'A300B4'}\n" for i in ids).encode()
    images = {f"fgvc-aircraft-2013b/data/images/{i}.jpg": jpeg_bytes((9, 9, 9)) for i in ("0001", "0002", "0003", "0004")}
    files = {"fgvc-aircraft-2013b.tar.gz": tar_gz({**lists, **images})}
    pin(monkeypatch, "fgvc_aircraft", files)
    with LocalFiles(files) as server:
        result = download_dataset("fgvc_aircraft", tmp_path, mirror=server.url, progress=False, echo=lambda _: None)
    assert result.status == "ready", result.message
    ds = get_dataset("fgvc_aircraft", tmp_path)
    assert ds.classnames == ["707-320", "A300B4"] and len(ds.train) == 2


def test_an_existing_split_file_is_kept_and_a_different_one_reported(tmp_path, monkeypatch):
    files = dtd_files()
    pin(monkeypatch, "dtd", files)
    folder = tmp_path / "dtd"
    folder.mkdir()
    subset = json.loads(files["split_zhou_DescribableTextures.json"])
    subset = {k: [e for e in v if e[1] < 2] for k, v in subset.items()}
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps(subset))
    with LocalFiles(files) as server:
        result = download_dataset("dtd", tmp_path, mirror=server.url, progress=False, echo=lambda _: None)
        assert "split_zhou_DescribableTextures.json" not in server.names()
    assert result.status == "ready"
    assert any("differs from the official CoOp split file" in n for n in result.notes)
    assert get_dataset("dtd", tmp_path).n_classes == 2


def test_stanford_cars_gets_its_split_file_and_the_manual_steps(tmp_path, monkeypatch):
    split = {"train": [["cars_train/00001.jpg", 0, "2012 Audi TTS Coupe"]],
             "val": [["cars_train/00002.jpg", 0, "2012 Audi TTS Coupe"]],
             "test": [["cars_test/00001.jpg", 0, "2012 Audi TTS Coupe"]]}
    files = {"split_zhou_StanfordCars.json": json.dumps(split).encode()}
    pin(monkeypatch, "stanford_cars", files)
    with LocalFiles(files) as server:
        result = download_dataset("stanford_cars", tmp_path, mirror=server.url, progress=False)
        assert result.status == "manual"
        for text in ("cannot be downloaded automatically", "rickyyyyyyy/torchvision-stanford-cars",
                     "cars_train/cars_train", "cars_train/*.jpg", f"ssp-data verify --root {tmp_path} stanford_cars"):
            assert text in result.message, text
        assert (tmp_path / "stanford_cars" / "split_zhou_StanfordCars.json").is_file()
        # after the manual steps, the same command says it is ready
        for rel in ("cars_train/00001.jpg", "cars_train/00002.jpg", "cars_test/00001.jpg"):
            (tmp_path / "stanford_cars" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "stanford_cars" / rel).write_bytes(jpeg_bytes((0, 0, 0)))
        assert download_dataset("stanford_cars", tmp_path, mirror=server.url, progress=False).status == "ready"


def test_an_unreachable_host_says_how_to_get_the_file(tmp_path, monkeypatch):
    files = dtd_files()
    pin(monkeypatch, "dtd", files)
    with LocalFiles({}) as server:  # every file: 404
        with pytest.raises(DownloadError, match=r"could not download dtd-r1\.0\.1\.tar\.gz: .*HTTP 404"):
            download_dataset("dtd", tmp_path, mirror=server.url, progress=False, echo=lambda _: None)
    assert not (tmp_path / "dtd").exists() and _leftovers(tmp_path) == []


def test_a_split_file_vendored_in_the_package_is_used_without_a_download(tmp_path, monkeypatch):
    """Vendoring later = dropping the (gzipped) files into ssp/data/splits/: looked up first."""
    import gzip

    from ssp.data import catalog

    files = dtd_files()
    pin(monkeypatch, "dtd", files)
    vendored = tmp_path / "splits"
    vendored.mkdir()
    (vendored / "split_zhou_DescribableTextures.json.gz").write_bytes(
        gzip.compress(files["split_zhou_DescribableTextures.json"]))
    monkeypatch.setattr(catalog, "PACKAGED_SPLITS", vendored)
    with LocalFiles({"dtd-r1.0.1.tar.gz": files["dtd-r1.0.1.tar.gz"]}) as server:
        result = download_dataset("dtd", tmp_path / "DATA", mirror=server.url, progress=False, echo=lambda _: None)
        assert server.names() == ["dtd-r1.0.1.tar.gz"]
    assert result.status == "ready" and any("copied from the package" in n for n in result.notes)
    (vendored / "split_zhou_DescribableTextures.json.gz").write_bytes(gzip.compress(b'{"train": [], "val": [], "test": []}'))
    from ssp.data.download import ensure_split_file

    with pytest.raises(DownloadError, match="sha256 .*, expected"):
        ensure_split_file(catalog.catalog_entry("dtd"), tmp_path / "DATA2" / "dtd", tmp_path / "dl", progress=False)
    assert not (tmp_path / "DATA2").exists()

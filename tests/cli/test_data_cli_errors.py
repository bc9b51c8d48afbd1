"""Issue 27 items 3 and 5 (ssp-data): bad output paths and bad split manifests get one line naming
the file and the field, never a traceback; misleading messages corrected."""
from __future__ import annotations

import json

import pytest
from _cli import run_cli

SPLITS = ["splits", "--dataset", "dtd", "--shots", "1", "--seeds", "1"]


def _no_traceback(done):
    assert done.returncode not in (0, None) and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_splits_and_verify_outputs_that_cannot_be_written(data_root, tmp_path):
    root = data_root / "coop"
    (tmp_path / "FILE").write_text("")
    for target, says in ((tmp_path, "is a folder"), (tmp_path / "FILE" / "m.json", "is a file, not a folder"),
                         ("/proc/m.json", "/proc is not writable")):
        done = run_cli("ssp.cli.data", *SPLITS, "--root", root, "-o", target)
        _no_traceback(done)
        assert "-o/--output" in done.stderr and says in done.stderr, done.stderr
    done = run_cli("ssp.cli.data", "verify", "--root", root, "dtd", "--images", "exists", "--no-progress",
                   "--json", tmp_path)
    _no_traceback(done)
    assert "--json" in done.stderr and "is a folder" in done.stderr and done.stdout == ""  # refused before work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def _manifest(data_root, tmp_path):
    out = tmp_path / "m.json"
    assert run_cli("ssp.cli.data", *SPLITS, "--root", data_root / "coop", "-o", out).returncode == 0
    return out, json.loads(out.read_text())


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(draws="1-shot seed 1"), "draws must be a list"),
    (lambda m: m.update(draws=["a", "b"]), "draws[0] must be a draw"),
    (lambda m: m["draws"][0].pop("support"), "draws[0] (1-shot seed 1) has no 'support'"),
    (lambda m: m["draws"][0].update(shots="one"), "draws[0].shots must be a positive integer, got 'one'"),
    (lambda m: m["draws"][0].update(seed=-1), "draws[0].seed must be an integer >= 0"),
    (lambda m: m["draws"][0].update(support="images/x.jpg"), "draws[0] (1-shot seed 1).support must be a list"),
    (lambda m: m["draws"][0]["support"].__setitem__(0, "x.jpg"), "support[0] must be [relative_path, label]"),
    (lambda m: m.update(classnames="banded"), "classnames must be a list"),
])
def test_a_malformed_manifest_is_named_with_its_field(data_root, tmp_path, edit, field):
    path, manifest = _manifest(data_root, tmp_path)
    edit(manifest)
    path.write_text(json.dumps(manifest))
    done = run_cli("ssp.cli.fewshot", "--dataset", "dtd", "--root", data_root / "coop", "--split-manifest", path,
                   "--shots", "1", "--seeds", "1", "--output", tmp_path / "out", "--feature-store",
                   tmp_path / "store", "--pretrained", "none", "--device", "cpu", "--no-progress")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert str(path) in done.stderr and field in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- item 5 (ssp-data)


def test_verify_split_file_error_tells_to_fix_the_given_file_not_delete_it(data_root, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    done = run_cli("ssp.cli.data", "verify", "--root", data_root / "coop", "dtd", "--split-file", empty,
                   "--no-progress")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"correct {empty}" in done.stdout and "leave out --split-file" in done.stdout
    assert "delete" not in done.stdout and empty.exists()


def test_mirror_that_is_not_a_url_says_what_mirror_takes(tmp_path):
    done = run_cli("ssp.cli.data", "download", "dtd", "--root", tmp_path / "DATA", "--mirror", "notaurl",
                   "--no-progress")
    _no_traceback(done)
    assert "--mirror 'notaurl' is neither a URL nor a folder" in done.stderr and "https://" in done.stderr
    assert "unknown url type" not in done.stderr and not (tmp_path / "DATA").exists()


def test_a_checksum_mismatch_through_a_mirror_names_one_place_for_the_file(tmp_path, monkeypatch):
    from _local_http import LocalFiles, dtd_files, pin

    files = dtd_files()
    pin(monkeypatch, "dtd", files)
    with LocalFiles({"split_zhou_DescribableTextures.json": b'{"train": [], "val": [], "test": []}',
                     "dtd-r1.0.1.tar.gz": files["dtd-r1.0.1.tar.gz"]}) as server:
        done = run_cli("ssp.cli.data", "download", "dtd", "--root", tmp_path / "DATA", "--mirror", server.url,
                       "--no-progress")
    text = done.stdout + done.stderr
    assert done.returncode == 1 and "checksum mismatch" in text and "Traceback" not in text
    places = [part.split()[0] for part in text.split("put it at ")[1:]]
    assert places == [str(tmp_path / "DATA" / "dtd" / "split_zhou_DescribableTextures.json")], text


def test_a_local_folder_works_as_a_mirror(tmp_path, monkeypatch):
    from _local_http import dtd_files, pin

    files = dtd_files()
    pin(monkeypatch, "dtd", files)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in files.items():
        (mirror / name).write_bytes(data)
    done = run_cli("ssp.cli.data", "download", "dtd", "--root", tmp_path / "DATA", "--mirror", mirror,
                   "--no-progress")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "DATA" / "dtd" / "split_zhou_DescribableTextures.json").is_file()


# ------------------------------------------------------------------------------------- item 7


def test_download_without_network_copies_the_shipped_split_and_leaves_no_downloads_folder(tmp_path):
    """The autouse fixture points downloads at a closed loopback port: no network. The split file
    comes from the package (sha256 checked); only the images fail, and nothing empty is left."""
    root = tmp_path / "DATA"
    done = run_cli("ssp.cli.data", "download", "dtd", "--root", root, "--no-progress")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "dtd-r1.0.1.tar.gz" in done.stderr and "split file not fetched" not in done.stderr
    split = root / "dtd" / "split_zhou_DescribableTextures.json"
    import hashlib

    from ssp.data.catalog import catalog_entry

    assert hashlib.sha256(split.read_bytes()).hexdigest() == catalog_entry("dtd").split.sha256
    assert not (root / ".ssp-downloads").exists()
    # a manual dataset: its split file is in place at once, the images' steps are printed
    cars = run_cli("ssp.cli.data", "download", "stanford_cars", "--root", root, "--no-progress")
    assert cars.returncode == 1 and "Manual steps" in cars.stdout
    assert (root / "stanford_cars" / "split_zhou_StanfordCars.json").is_file()
    assert "copied from the package" in cars.stdout and "MIT" in cars.stdout
    assert not (root / ".ssp-downloads").exists()

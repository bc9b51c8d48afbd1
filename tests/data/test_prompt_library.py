"""``ssp-data download prompts``: the prompt library against a local HTTP server (127.0.0.1 only):
layout, checksum mismatch, resume, verify, and ``--prompts dataset+cupl`` feeding TIMO from images."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from _local_http import DTD_CLASSES, LocalFiles, dtd_files, pin

from ssp.cli.data import main
from ssp.data import prompt_library
from ssp.data.prompts import resolve_prompts

ASSETS = Path(__file__).parents[1] / "assets"


def _sentences(n: int = 5) -> dict[str, bytes]:
    """Fake CuPL files (never the published text) for two datasets, served under the repository paths."""
    files = {}
    for dataset, classes in (("dtd", DTD_CLASSES), ("oxford_pets", ("abyssinian", "beagle"))):
        data = {c: [f"a photo of {c} number {i}, with detail {'x' * i}." for i in range(n + len(c) % 3)]
                for c in classes}
        files[prompt_library.LIBRARIES["cupl"].remote_name(dataset)] = json.dumps(data, indent=1).encode()
    return files


def _pin(monkeypatch, files: dict[str, bytes]) -> None:
    lib = prompt_library.LIBRARIES["cupl"]
    digests = {d: hashlib.sha256(files[lib.remote_name(d)]).hexdigest() for d in ("dtd", "oxford_pets")}
    monkeypatch.setitem(prompt_library.LIBRARIES, "cupl", dataclasses.replace(lib, sha256=digests))


def test_download_lays_out_each_dataset_and_verifies(tmp_path, monkeypatch, capsys):
    files = _sentences()
    _pin(monkeypatch, files)
    with LocalFiles(files) as server:
        assert main(["download", "prompts", "cupl", "--root", str(tmp_path), "--mirror", server.url,
                     "--no-progress"]) == 0
        n_requests = len(server.requests)
        assert main(["download", "prompts", "cupl", "--root", str(tmp_path), "--mirror", server.url,
                     "--no-progress"]) == 0
        assert len(server.requests) == n_requests          # intact files are not fetched again
    folder = tmp_path / "prompts" / "cupl"
    assert sorted(p.name for p in folder.iterdir()) == [".ssp-download.json", "dtd.json", "oxford_pets.json"]
    assert (folder / "dtd.json").read_bytes() == files["Prompt_CuPL/dtd.json"]
    record = json.loads((folder / ".ssp-download.json").read_text())
    assert record["source"].endswith(prompt_library.TIMO_COMMIT) and set(record["files"]) == {"dtd", "oxford_pets"}
    assert "raw.githubusercontent.com/lyymuwu/TIMO/" in record["files"]["dtd"]["url"]
    capsys.readouterr()
    assert main(["verify", "prompts", "--root", str(tmp_path)]) == 0
    assert "cupl: 2/2 dataset file(s)" in capsys.readouterr().out
    # a damaged file is reported, with the fix
    (folder / "dtd.json").write_text("{}")
    assert main(["verify", "prompts", "--root", str(tmp_path)]) == 1
    assert "CORRUPT: dtd.json: sha256" in capsys.readouterr().out


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    files = _sentences()
    _pin(monkeypatch, files)
    served = dict(files, **{"Prompt_CuPL/dtd.json": b'{"banded": ["another text"]}'})
    with LocalFiles(served) as server:
        assert main(["download", "prompts", "cupl", "--root", str(tmp_path), "--mirror", server.url,
                     "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch for dtd.json" in err and "sha256" in err
    folder = tmp_path / "prompts" / "cupl"
    assert not (folder / "dtd.json").exists() and not list(folder.glob("*.part"))


def test_interrupted_download_resumes(tmp_path, monkeypatch):
    files = _sentences(n=400)
    _pin(monkeypatch, files)
    name = "Prompt_CuPL/dtd.json"
    with LocalFiles(files, cut={name: 5000}) as server:
        assert main(["download", "prompts", "cupl", "--root", str(tmp_path), "--mirror", server.url,
                     "--no-progress"]) == 0
        ranges = [r for n, r in server.requests if n == name]
    assert ranges == [None, "bytes=5000-"]                     # the second request resumed
    assert (tmp_path / "prompts" / "cupl" / "dtd.json").read_bytes() == files[name]


def test_unknown_library_and_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match="unknown prompt library 'gpt4'"):
        main(["download", "prompts", "gpt4", "--root", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="ssp-data download prompts cupl --root"):
        resolve_prompts("cupl", dataset="dtd", classnames=list(DTD_CLASSES), templates=["{}"], root=tmp_path)
    with pytest.raises(ValueError, match="has no file for dataset 'imagenet'"):
        prompt_library.library_file("cupl", "imagenet", tmp_path)


@pytest.mark.filterwarnings("ignore:.*RANDOMLY INITIALISED:UserWarning")
def test_library_prompts_feed_timo_from_images(tmp_path, monkeypatch):
    """ssp-data download dtd + prompts cupl, then ssp-fewshot --prompts dataset+cupl --methods timo:
    per-prompt features [C, P, D] are encoded into the feature store, IGT weighs P > 1 prompts."""
    from ssp.cli.fewshot import main as fewshot

    files, images = _sentences(), dtd_files()
    _pin(monkeypatch, files)
    pin(monkeypatch, "dtd", images)
    data = tmp_path / "DATA"
    with LocalFiles({**files, **images}) as server:
        assert main(["download", "dtd", "--root", str(data), "--mirror", server.url, "--no-progress"]) == 0
        assert main(["download", "prompts", "cupl", "--root", str(data), "--mirror", server.url, "--no-progress"]) == 0
    args = ["--dataset", "dtd", "--root", str(data), "--backbone", str(ASSETS / "tiny-vit.json"),
            "--pretrained", "none", "--views", "1", "--shots", "1", "--seeds", "1", "--methods", "timo",
            "--prompts", "dataset+cupl", "--device", "cpu", "--feature-store", str(tmp_path / "store"),
            "--no-progress"]
    assert fewshot([*args, "--output", str(tmp_path / "out")]) == 0
    (run,) = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*.run.json")]
    assert run["details"]["prompts_per_class"] == 1 + 5       # the dataset's template + 5 sentences
    assert run["details"]["igt_has_nothing_to_weigh"] is False
    assert run["text_features"]["prompt_features"]["prompts_per_class_max"] == 1 + 6
    assert not any("nothing to weigh" in w for w in run["warnings"])
    stored = list((tmp_path / "store").rglob("*.safetensors"))
    assert any("prompt_features" in p.parent.name for p in stored)

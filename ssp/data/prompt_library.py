"""The prompt library: LLM-written per-class descriptions (CuPL, DCLIP, WaffleCLIP), fetched from
their published source with pinned sha256 digests, laid out per dataset, verifiable::

    ssp-data download prompts cupl --root DATA      # -> DATA/prompts/cupl/<dataset>.json (+ record)
    ssp-data verify prompts --root DATA             # each file against its pinned digest
    ssp-fewshot --dataset stanford_cars --prompts cupl ...          # the library's file for the dataset
    ssp-fewshot --dataset stanford_cars --prompts dataset+cupl ...  # templates + descriptions (TIMO's text)

The text is never bundled with ssp: each file is downloaded from a fixed commit of the repository
that published it (resume and checksum as for the images, :func:`ssp.data.download.fetch`).

Sources (the per-dataset sentence files the TIMO repository released, commit :data:`TIMO_COMMIT`,
one JSON ``{"class name": ["sentence", ...]}`` per dataset; docs/prompts.md):

* ``cupl``: CuPL sentences (Pratt et al., "What does a platypus look like?", ICCV 2023);
* ``dclip``: descriptors of Menon & Vondrick ("Visual Classification via Description from Large
  Language Models", ICLR 2023) written as sentences ("A photo of ...: a X, which has ...");
* ``waffle``: WaffleCLIP's descriptors with random-word ones (Roth et al., ICCV 2023).

The ImageNet CuPL file of that commit could not be read when the digests were pinned (its blob
is missing from the snapshot used), so ``cupl`` has no ImageNet file: download says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ssp._io import write_json_atomic
from ssp.data.catalog import resource_urls
from ssp.data.download import check_file, fetch

__all__ = ["LIBRARIES", "PromptLibrary", "TIMO_COMMIT", "library_names", "library_file", "download_prompts",
           "verify_prompts", "PROMPTS_FOLDER"]

TIMO_COMMIT = "75eca4cf1fab9255e3e1997e6b846da1549af475"
_RAW = f"https://raw.githubusercontent.com/lyymuwu/TIMO/{TIMO_COMMIT}"
#: Folder under the data root that receives ``<library>/<dataset>.json``.
PROMPTS_FOLDER = "prompts"
MARKER = ".ssp-download.json"

# ssp's dataset names -> the file names of the TIMO repository
_FILES = {"caltech101": "caltech101", "dtd": "dtd", "eurosat": "eurosat", "fgvc_aircraft": "fgvcaircraft",
          "oxford_flowers": "flowers102", "food101": "food101", "imagenet": "imagenet", "oxford_pets": "oxfordpets",
          "stanford_cars": "stanfordcars", "sun397": "sun397", "ucf101": "ucf101"}


@dataclass(frozen=True)
class PromptLibrary:
    """One library: ``folder`` in the source repository, ``sha256`` per ssp dataset name."""

    name: str
    title: str
    credit: str
    folder: str
    sha256: dict

    def remote_name(self, dataset: str) -> str:
        """The file's path in the source repository (also its name on a mirror)."""
        return f"{self.folder}/{_FILES[dataset]}.json"

    def url(self, dataset: str) -> str:
        return f"{_RAW}/{self.remote_name(dataset)}"


LIBRARIES: dict[str, PromptLibrary] = {lib.name: lib for lib in [
    PromptLibrary("cupl", "CuPL", "Pratt et al., ICCV 2023 (sentences as released with TIMO, Li et al., AAAI 2025)",
                  "Prompt_CuPL", {
                      "caltech101": "b5c3f52be95a1e450c4ebbac1fd0d2644a5d2efc2bac15e1a82cad587fdd09f6",
                      "dtd": "b5d2ae76c1e8e5ded0df87d70aa60ce78730060ae65d7b36c30034457b8cfbe8",
                      "eurosat": "c1831f13dff8f8f2b6e3121b122b4e40582ccc1274537c3f9023641d35d07234",
                      "fgvc_aircraft": "3d0733867fa1e30a229639df9528d9da3fe11b9cf56c0cd6eda11688d9a31393",
                      "oxford_flowers": "904c8850eafeaa1cc60a0f55fab7bdc168af4b2d1e5cb5bd06c5d32cbbc9d676",
                      "food101": "0aed280ca518c37abec6b1c85a6093b8f9993988df1581bda59805b541694735",
                      "oxford_pets": "f393a01f911ceed70458d1b7fa3b8f2df2148732210b3783488f2efecc672c95",
                      "stanford_cars": "8b84424728b57442cbe190b0d996fda7a16fbb8ac42617911c61fea8f1496a53",
                      "sun397": "b6e2c68f1cfaad78a725de1aea337cea8f5481402708225bcecbe8ce8b436967",
                      "ucf101": "f685a1d6e8b1316a4f70554d2913c9fb58050af80c96004e6c7b40515488f9e4"}),
    PromptLibrary("dclip", "DCLIP", "Menon & Vondrick, ICLR 2023 (descriptors as sentences, released with TIMO)",
                  "Prompt_DCLIP", {
                      "caltech101": "1fb21b7abf78dcd0c7a84baa71264278084b472896cb1cf1a761469fc8ac8a38",
                      "dtd": "1bc4d9db100a4b3d0b509f685ce07f7a0dadd3e94d6bd9b6d3a60ab0ae69c8fe",
                      "eurosat": "05ecbf95728648dd84edc52fab86bd548a0af885c90f34ac23a690f88e2bd53b",
                      "fgvc_aircraft": "fd09167fb94a4d6c8397cce34d71a45096817ef7271cb248e10efd419ded6c7b",
                      "oxford_flowers": "e4301b22f23dc4b29e236f0a5c8a97ddfac80d326ef1fd90175173deb4538123",
                      "food101": "51143071b185869dc7aa1d4dfb2c0a577b341d481de961763b1311c39725162d",
                      "imagenet": "64372576cfd63c70d04ef34d71172b821bc4c4acfe5d1d882900576e018ba7a2",
                      "oxford_pets": "5c7f7d1b67fed6e5699e6b59ca4b8f9d188e256edc0da264fd21924704c9625b",
                      "stanford_cars": "db89917a45911251d8ba3c2fc75291f2de873394a70e90d5a4b0c92d78d47117",
                      "sun397": "bd4874693e7fed48948c4b1e8bb54f1b1060a16289ae42db4ad3d9ba6b8613dc",
                      "ucf101": "c8ab9d80333ca6002eb5f92a4b1e6d5c8f13c0726ae75485112822ca119d537e"}),
    PromptLibrary("waffle", "WaffleCLIP", "Roth et al., ICCV 2023 (descriptors as sentences, released with TIMO)",
                  "Prompt_Waffle", {
                      "caltech101": "bfcc4b5dab3d95b91e4dd124ab523c9b572646d6b95b9a6c4a74852bd027dc41",
                      "dtd": "f0fe12b3538c6617a1b622770a8794498e8dce91bcfc5bfca06eb7290c1cdd8b",
                      "eurosat": "2fe6655341ba1ba339c02b41b7bfa3787156b4f6eebd4237c423a4a421ce623b",
                      "fgvc_aircraft": "60befdd301e6a7683c5c48743dec99e1c074c4fe67e4d29f19dd19b428519c42",
                      "oxford_flowers": "6e47a2c9378d597d47c7e0a189ce4f5472159a6fb2f6612da4c7a17b9771bc75",
                      "food101": "4feb3a510f23cef8f42ca925ac9303af93f72f3919ffaa8362825ef27ed28e63",
                      "imagenet": "2a2e90086832672d51ca84d86dce01066b0e392e359e082408934aa66c4298be",
                      "oxford_pets": "11678a70fe6071a463c75079b3b4044e827e6ae2b2782d2ca2c94ea917cb9d3e",
                      "stanford_cars": "512458decb62ed90307882a47d55c2fa097ebe70f0278d85fa598e1b06fa6169",
                      "sun397": "29e84713ed215c27c8bb1135a67b36a107becb29a28b9a1d5bd780b2f8f4c403",
                      "ucf101": "9d5ce306d6ab7276fa765d07cb104120acd3a29c041f7974c6f9ec77db74f861"}),
]}


def library_names() -> tuple[str, ...]:
    return tuple(LIBRARIES)


def _library(name: str) -> PromptLibrary:
    key = str(name).strip().lower()
    if key not in LIBRARIES:
        raise ValueError(f"unknown prompt library {name!r}; choose from {', '.join(LIBRARIES)}")
    return LIBRARIES[key]


def library_folder(name: str, root: str | Path) -> Path:
    return Path(root).expanduser() / PROMPTS_FOLDER / _library(name).name


def library_file(name: str, dataset: str, root: str | Path | None) -> Path:
    """The laid-out file of library ``name`` for ``dataset`` under the data ``root``; a one-line
    error with the download command when it is not there (or the library has no such file)."""
    lib = _library(name)
    if dataset not in lib.sha256:
        raise ValueError(f"prompt library {lib.name} has no file for dataset {dataset!r} (it has: "
                         f"{', '.join(lib.sha256)}); give a JSON file of per-class sentences instead")
    if root is None:
        raise ValueError(f"prompts {lib.name!r}: the prompt library lives under the data root; pass --root (or set "
                         f"$SSP_DATA_ROOT) and fetch it with: ssp-data download prompts {lib.name} --root DATA")
    path = library_folder(lib.name, root) / f"{dataset}.json"
    if not path.is_file():
        raise FileNotFoundError(f"prompt library file {path} not found; fetch it with: "
                                f"ssp-data download prompts {lib.name} --root {Path(root).expanduser()}")
    return path


def download_prompts(name: str, root: str | Path, *, datasets: list[str] | None = None, mirror: str | None = None,
                     progress: bool = True) -> tuple[Path, list[str]]:
    """Fetch library ``name`` into ``<root>/prompts/<name>/<dataset>.json`` (every dataset it has,
    or ``datasets``): each file checked against its pinned sha256 before it takes its final name
    (``.part`` while incomplete, resumed by a Range request); files already there and intact are
    not fetched again. Writes ``.ssp-download.json`` (source commit, URLs, digests). Returns
    ``(folder, notes)``. Raises :class:`ssp.data.download.DownloadError` on a failed file."""
    lib = _library(name)
    folder = library_folder(lib.name, root)
    wanted = list(lib.sha256) if datasets is None else list(datasets)
    notes = []
    if lib.name == "cupl" and datasets is None:
        notes.append("cupl: no ImageNet file (its digest could not be pinned: docs/prompts.md)")
    record = {"library": lib.name, "title": lib.title, "credit": lib.credit,
              "source": f"github.com/lyymuwu/TIMO@{TIMO_COMMIT}", "files": {}}
    for dataset in wanted:
        if dataset not in lib.sha256:
            raise ValueError(f"prompt library {lib.name} has no file for dataset {dataset!r}")
        dest = folder / f"{dataset}.json"
        digest = lib.sha256[dataset]
        if not (dest.is_file() and check_file(dest, sha256=digest) is None):
            fetch(resource_urls(lib.remote_name(dataset), (lib.url(dataset),), mirror), dest, sha256=digest,
                  progress=progress)
        record["files"][dataset] = {"url": lib.url(dataset), "sha256": digest}
    marker = folder / MARKER
    if marker.is_file():
        try:
            old = json.loads(marker.read_text(encoding="utf-8")).get("files", {})
            record["files"] = {**old, **record["files"]}
        except (OSError, ValueError):
            pass
    record["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(marker, record)
    return folder, notes


def verify_prompts(root: str | Path, names: list[str] | None = None) -> list[tuple[str, bool, str]]:
    """``(library, ok, one line)`` for every library folder found under ``<root>/prompts`` (or
    ``names``): each file present is checked against its pinned sha256 and must parse as
    ``{"class": ["sentence", ...]}``; a library folder with none of its files is reported absent."""
    out = []
    for name in (names or [n for n in LIBRARIES if library_folder(n, root).is_dir()]):
        lib = _library(name)
        folder = library_folder(lib.name, root)
        present = [d for d in lib.sha256 if (folder / f"{d}.json").is_file()]
        if not present:
            out.append((lib.name, False, f"{lib.name}: absent from {folder} (ssp-data download prompts {lib.name} "
                                         f"--root {Path(root).expanduser()})"))
            continue
        bad = []
        for dataset in present:
            path = folder / f"{dataset}.json"
            problem = check_file(path, sha256=lib.sha256[dataset])
            if problem is None:
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
                        problem = "not a {class: [sentences]} object"
                except (ValueError, UnicodeDecodeError) as err:
                    problem = f"not JSON ({err})"
            if problem is not None:
                bad.append(f"{path.name}: {problem}")
        line = (f"{lib.name}: {len(present)}/{len(lib.sha256)} dataset file(s) in {folder}, "
                + ("all match their pinned sha256" if not bad else "CORRUPT: " + "; ".join(bad)
                   + f" (delete and rerun ssp-data download prompts {lib.name})"))
        out.append((lib.name, not bad, line))
    return out

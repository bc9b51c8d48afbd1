"""Prompt sets: the text side of every method as an explicit, recorded choice.

A prompt set turns a dataset's class names into per-class sentence lists; the backbone encodes
each sentence, L2-normalises, averages per class and L2-normalises again
(:meth:`ssp.backbone.model.Backbone.text_classifier` with ``class_prompts``)::

    prompts = resolve_prompts("clip-ensemble", dataset="dtd", classnames=ds.classnames,
                              templates=ds.templates)
    prompts.sentences      # [[sentence, ...] per class]
    prompts.record()       # what a run JSON keeps: name, source, templates / file digest

Names (:data:`PROMPT_SETS`):

    dataset        the dataset's own template(s): CoOp / Tip-Adapter (the default)
    single         the single CLIP template "a photo of a {}."
    clip-ensemble  the template ensemble CLIP published for the dataset (Radford et al., 2021,
                   the repository's data/prompts.md); ImageNet and datasets without a list: the
                   80 ImageNet templates that open_clip ships (``OPENAI_IMAGENET_TEMPLATES``)
    FILE.json      per-class sentences in the CuPL format (Pratt et al., ICCV 2023):
                   ``{"class name": ["sentence", ...], ...}`` (docs/prompts.md)
    cupl, dclip,   a prompt library's file for the dataset, under the data root
    waffle         (``ssp-data download prompts cupl``; :mod:`ssp.data.prompt_library`)
    NAME+FILE.json a template set and a file (or a library) together (APE's and TIMO's text:
                   templates + CuPL sentences, ``dataset+cupl``)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ssp.data.base import check_templates, clean_classname
from ssp.data.benchmarks import canonical_name
from ssp.data.prompt_library import library_file, library_names

__all__ = ["PROMPT_SETS", "Prompts", "resolve_prompts", "read_class_prompts", "clip_templates",
           "prompt_choices"]

# Template ensembles CLIP published per dataset (data/prompts.md of the CLIP repository), keyed
# by this package's dataset names. ImageNet's 80 come from open_clip (see clip_templates).
_CLIP_TEMPLATES: dict[str, tuple[str, ...]] = {
    "caltech101": (
        "a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.",
        "a sketch of a {}.", "a tattoo of a {}.", "a toy {}.", "a rendition of a {}.",
        "a embroidered {}.", "a cartoon {}.", "a {} in a video game.", "a plushie {}.",
        "a origami {}.", "art of a {}.", "graffiti of a {}.", "a drawing of a {}.",
        "a doodle of a {}.", "a photo of the {}.", "a painting of the {}.", "the plastic {}.",
        "a sculpture of the {}.", "a sketch of the {}.", "a tattoo of the {}.", "the toy {}.",
        "a rendition of the {}.", "the embroidered {}.", "the cartoon {}.",
        "the {} in a video game.", "the plushie {}.", "the origami {}.", "art of the {}.",
        "graffiti of the {}.", "a drawing of the {}.", "a doodle of the {}.",
    ),
    "dtd": (
        "a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.",
        "a photo of a {} object.", "a photo of the {} texture.", "a photo of the {} pattern.",
        "a photo of the {} thing.", "a photo of the {} object.",
    ),
    "eurosat": (
        "a centered satellite photo of {}.", "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ),
    "fgvc_aircraft": ("a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."),
    "oxford_flowers": ("a photo of a {}, a type of flower.",),
    "food101": ("a photo of {}, a type of food.",),
    "oxford_pets": ("a photo of a {}, a type of pet.",),
    "stanford_cars": (
        "a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!",
        "a photo of my dirty {}.", "a photo of my clean {}.", "a photo of my new {}.",
        "a photo of my old {}.",
    ),
    "sun397": ("a photo of a {}.", "a photo of the {}."),
    # UCF101: {photo, video, example, demonstration} of {a, the} person {"", using, doing,
    # during, performing, practicing} {} -- 48 templates
    "ucf101": tuple(
        f"a {kind} of {article} person {verb}{{}}."
        for verb in ("", "using ", "doing ", "during ", "performing ", "practicing ")
        for article in ("a", "the")
        for kind in ("photo", "video", "example", "demonstration")
    ),
}

SINGLE_TEMPLATE = "a photo of a {}."


def clip_templates(dataset: str) -> tuple[list[str], str]:
    """CLIP's published template ensemble for ``dataset``: ``(templates, where from)``."""
    try:
        key = canonical_name(dataset)
    except (KeyError, ValueError):
        key = str(dataset)
    if key in _CLIP_TEMPLATES:
        return list(_CLIP_TEMPLATES[key]), f"CLIP's published ensemble for {key}"
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    where = "CLIP's 80 ImageNet templates (open_clip)"
    return templates, where if key == "imagenet" else f"{where}: no list was published for {key}"


@dataclass(frozen=True)
class _PromptSet:
    name: str
    description: str
    templates: Callable[[str, Sequence[str]], tuple[list[str], str]]  # (dataset, its templates)


PROMPT_SETS: dict[str, _PromptSet] = {p.name: p for p in [
    _PromptSet("dataset", "the dataset's own template(s) (CoOp / Tip-Adapter)",
               lambda dataset, own: (list(own), "the dataset's templates")),
    _PromptSet("single", f"the single CLIP template {SINGLE_TEMPLATE!r}",
               lambda dataset, own: ([SINGLE_TEMPLATE], "the single CLIP template")),
    _PromptSet("clip-ensemble", "CLIP's template ensemble for the dataset (ImageNet's 80 elsewhere)",
               lambda dataset, own: clip_templates(dataset)),
]}


def prompt_choices() -> str:
    """One line per choice, for ``--help``."""
    lines = [f"{name}: {p.description}" for name, p in PROMPT_SETS.items()]
    return "; ".join(lines + ["a JSON file of per-class sentences (CuPL format)",
                              "cupl, dclip, waffle: a prompt library (ssp-data download prompts NAME)",
                              "NAME+FILE.json or NAME+LIBRARY: both, averaged together"])


@dataclass
class Prompts:
    """A resolved prompt set.

    Attributes:
        spec: what was asked (``"dataset"``, ``"clip-ensemble+/x/cupl.json"``, ...).
        sentences: per class, the sentences averaged into its text embedding.
        templates: the templates filled in (``[]`` for a file alone).
        source: where the templates come from, in words.
        file, file_sha256: the sentence file and its digest (``None`` without one).
    """

    spec: str
    sentences: list[list[str]]
    templates: list[str] = field(default_factory=list)
    source: str = ""
    file: str | None = None
    file_sha256: str | None = None

    def record(self) -> dict:
        """The run JSON's ``prompts`` entry (also part of its settings key)."""
        return {"prompts": self.spec, "source": self.source, "templates": list(self.templates),
                "file": self.file, "file_sha256": self.file_sha256,
                "sentences_per_class": sorted({len(s) for s in self.sentences})}


def _fill(templates: Sequence[str], classname: str) -> list[str]:
    label = clean_classname(str(classname))
    return [t.replace("{}", label) for t in templates]


def _key(name: str) -> str:
    return " ".join(clean_classname(str(name)).lower().split())


def read_class_prompts(path: str | Path, classnames: Sequence[str]) -> list[list[str]]:
    """Per-class sentences from a CuPL-style JSON file ``{"class": ["sentence", ...]}``, in the
    order of ``classnames``. Keys match a class name exactly or after ``_`` -> space, case and
    repeated spaces ignored; keys of other classes are ignored. Errors name the file and the
    bad entry."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"prompts {path} is a folder; give a JSON file of per-class sentences "
                         "(e.g. a CuPL file) or one of " + ", ".join(PROMPT_SETS))
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found; give a JSON file of per-class sentences "
                                "or one of " + ", ".join(PROMPT_SETS))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"prompts file {path} is not valid JSON (line {err.lineno}, column {err.colno}: "
                         f"{err.msg})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"prompts file {path} is not UTF-8 text ({err.reason})") from None
    if not isinstance(data, dict):
        raise ValueError(f"prompts file {path} must hold one object {{\"class name\": [\"sentence\", ...]}}, "
                         f"got a JSON {type(data).__name__}")
    by_key: dict[str, str] = {}
    for name, sentences in data.items():
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list) or not all(isinstance(s, str) and s.strip() for s in sentences):
            raise ValueError(f"prompts file {path}: entry {name!r} must be a list of non-empty sentences, "
                             f"got {json.dumps(sentences)[:80]}")
        by_key.setdefault(_key(name), name)
    out, missing = [], []
    for classname in classnames:
        name = classname if classname in data else by_key.get(_key(classname))
        if name is None or not data[name]:
            missing.append(str(classname))
            continue
        value = data[name]
        out.append([value] if isinstance(value, str) else list(value))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(f"prompts file {path} has no sentences for class {missing[0]!r}{more}; add an entry "
                         f"\"{missing[0]}\": [\"...\"] (keys match class names, '_' = space, any case)")
    return out


def resolve_prompts(spec: str | None, *, dataset: str, classnames: Sequence[str],
                    templates: Sequence[str], root: str | Path | None = None) -> Prompts:
    """The per-class sentences of prompt choice ``spec`` (see the module docstring) for a
    dataset named ``dataset`` whose own templates are ``templates``. ``None`` = ``"dataset"``.
    ``root``: the data root holding the prompt libraries (``<root>/prompts/<library>/``)."""
    spec = "dataset" if spec is None else str(spec).strip()
    if not spec:
        raise ValueError("prompts must be a prompt set name or a JSON file, got ''")
    name, file = None, None
    head, plus, rest = spec.partition("+")
    if spec in PROMPT_SETS:
        name = spec
    elif plus and head in PROMPT_SETS:
        name, file = head, rest
    elif spec.lower().endswith(".json") or Path(spec).expanduser().exists() or spec.lower() in library_names():
        file = spec
    else:
        raise ValueError(f"unknown prompts {spec!r}; choose {', '.join(PROMPT_SETS)}, a prompt library "
                         f"({', '.join(library_names())}), a JSON file of per-class sentences, or NAME+FILE.json")
    library = None
    if file is not None and file.lower() in library_names() and not Path(file).expanduser().exists():
        library = file.lower()
        file = str(library_file(library, dataset, root))
    used: list[str] = []
    source = []
    if name is not None:
        used, where = PROMPT_SETS[name].templates(dataset, templates)
        used = check_templates(used, f"prompt set {name!r}")
        source.append(where)
    sentences = [_fill(used, c) for c in classnames]
    digest = None
    if file is not None:
        extra = read_class_prompts(file, classnames)
        sentences = [a + b for a, b in zip(sentences, extra)]
        path = Path(file).expanduser()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        file = str(path.resolve())
        source.append(f"per-class sentences from {path.name}"
                      + (f" (prompt library {library})" if library else ""))
    return Prompts(spec=spec, sentences=sentences, templates=used, source=" + ".join(source),
                   file=file, file_sha256=digest)

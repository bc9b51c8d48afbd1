"""Prompt sets: the registry, CLIP's ensembles, the CuPL file reader and its one-line errors, and
the backbone's text classifier over per-class sentences."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssp.data.prompts import (
    PROMPT_SETS,
    clip_templates,
    read_class_prompts,
    resolve_prompts,
)

CLASSES = ["banded", "polka_dotted", "Zig zagged"]


def test_named_sets_fill_every_class():
    own = resolve_prompts("dataset", dataset="dtd", classnames=CLASSES, templates=["{} texture."])
    assert own.sentences == [["banded texture."], ["polka dotted texture."], ["Zig zagged texture."]]
    single = resolve_prompts("single", dataset="dtd", classnames=CLASSES, templates=["{} texture."])
    assert single.sentences[1] == ["a photo of a polka dotted."] and single.templates == ["a photo of a {}."]
    ensemble = resolve_prompts("clip-ensemble", dataset="dtd", classnames=CLASSES, templates=["x {}"])
    assert len(ensemble.sentences[0]) == 8 and ensemble.sentences[0][0] == "a photo of a banded texture."
    assert "dtd" in ensemble.source
    assert resolve_prompts(None, dataset="dtd", classnames=CLASSES, templates=["{} texture."]).spec == "dataset"
    assert set(PROMPT_SETS) == {"dataset", "single", "clip-ensemble"}


def test_clip_ensembles_per_dataset_and_imagenet_from_open_clip():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    sizes = {name: len(clip_templates(name)[0]) for name in
             ("caltech101", "dtd", "eurosat", "fgvc_aircraft", "oxford_flowers", "food101", "oxford_pets",
              "stanford_cars", "sun397", "ucf101", "imagenet")}
    assert sizes == {"caltech101": 34, "dtd": 8, "eurosat": 3, "fgvc_aircraft": 2, "oxford_flowers": 1,
                     "food101": 1, "oxford_pets": 1, "stanford_cars": 8, "sun397": 2, "ucf101": 48,
                     "imagenet": 80}
    imagenet, where = clip_templates("imagenet")
    assert imagenet == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES] and "open_clip" in where
    # a dataset without a published list gets ImageNet's, and says so
    other, where = clip_templates("my_folder")
    assert other == imagenet and "no list was published for my_folder" in where
    ucf = clip_templates("ucf101")[0]
    assert len(set(ucf)) == 48 and "a video of the person practicing {}." in ucf and "a photo of a person {}." in ucf
    for templates in (clip_templates(n)[0] for n in sizes):
        assert all(t.count("{}") == 1 for t in templates)


def _write(tmp_path: Path, data, name="cupl.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_cupl_file_is_read_in_class_order_with_loose_keys(tmp_path):
    path = _write(tmp_path, {"zig zagged": ["A zigzag."], "Polka Dotted": ["Dots.", "Round dots."],
                             "banded": "Bands.", "unused class": ["x"]})
    assert read_class_prompts(path, CLASSES) == [["Bands."], ["Dots.", "Round dots."], ["A zigzag."]]
    both = resolve_prompts(f"dataset+{path}", dataset="dtd", classnames=CLASSES, templates=["{} texture."])
    assert both.sentences[1] == ["polka dotted texture.", "Dots.", "Round dots."]
    alone = resolve_prompts(str(path), dataset="dtd", classnames=CLASSES, templates=["{} texture."])
    assert alone.sentences[0] == ["Bands."] and alone.templates == []
    record = alone.record()
    assert record["file"] == str(path.resolve()) and len(record["file_sha256"]) == 64
    assert record["sentences_per_class"] == [1, 2]


@pytest.mark.parametrize("content,match", [
    ({"banded": ["a"], "polka_dotted": ["b"]}, r"cupl.json has no sentences for class 'Zig zagged'; add"),
    ({"banded": ["a"]}, r"no sentences for class 'polka_dotted' and 1 more"),
    ({"banded": [], "polka dotted": ["b"], "zig zagged": ["c"]}, r"no sentences for class 'banded'"),
    ({"banded": [3], "polka dotted": ["b"], "zig zagged": ["c"]}, r"cupl.json: entry 'banded' must be a list"),
    (["a", "b"], r"must hold one object .* got a JSON list"),
    ("{not json", r"cupl.json is not valid JSON \(line 1, column 2"),
])
def test_bad_files_give_one_line_errors_naming_the_file_and_entry(tmp_path, content, match):
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=match) as err:
        read_class_prompts(path, CLASSES)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match=r"unknown prompts 'fancy'; choose dataset, single, clip-ensemble"):
        resolve_prompts("fancy", dataset="dtd", classnames=CLASSES, templates=["{}"])
    with pytest.raises(FileNotFoundError, match=r"prompts file .*nope.json not found"):
        resolve_prompts(str(tmp_path / "nope.json"), dataset="dtd", classnames=CLASSES, templates=["{}"])


@pytest.mark.filterwarnings("ignore:backbone .* is RANDOMLY INITIALISED")
def test_text_classifier_over_the_sentences_averages_each_class():
    from ssp.backbone.model import load_backbone

    tiny = load_backbone(str(Path(__file__).parents[1] / "assets" / "tiny-vit.json"), device="cpu")
    prompts = resolve_prompts("clip-ensemble", dataset="eurosat", classnames=["river", "forest"],
                              templates=["{}"])
    weights = tiny.text_classifier(["river", "forest"], [], class_prompts=prompts.sentences)
    with torch.no_grad():
        each = torch.nn.functional.normalize(tiny.encode_text(prompts.sentences[1]), dim=-1)
    expected = torch.nn.functional.normalize(each.mean(0), dim=0)
    torch.testing.assert_close(weights[1], expected, rtol=1e-5, atol=1e-6)
    # the template path gives the same classifier as the filled sentences
    same = tiny.text_classifier(["river", "forest"], prompts.templates)
    torch.testing.assert_close(weights, same, rtol=1e-5, atol=1e-6)

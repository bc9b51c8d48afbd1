"""One name per concept: the renamed public attributes keep deprecated aliases that warn and
return the same values; ``Features`` uses the project's field names."""

import dataclasses
from pathlib import Path

import pytest
import torch

from ssp.backbone.model import n_patches, num_local_features
from ssp.features.types import Features

ASSETS = Path(__file__).parent / "assets"


def _alias(obj, old, new):
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use .*{new}") as record:
        value = getattr(obj, old)
    assert record[0].filename == __file__  # the warning points at the caller, not the library
    return value, getattr(obj, new)


def test_features_field_names():
    names = [f.name for f in dataclasses.fields(Features)]
    assert names == ["image_features", "labels", "patch_features", "view_features", "kept"]


def test_features_from_file_tensor_names_and_deprecated_aliases():
    g, p, v = torch.randn(4, 3), torch.randn(4, 2, 3), torch.randn(2, 4, 3)
    f = Features.from_dict({"global": g, "labels": torch.arange(4).int(), "local": p, "views": v})
    assert f.image_features is g and f.patch_features is p and f.view_features is v and f.kept is None
    assert f.labels.dtype == torch.int64
    for old, new in (("global_", "image_features"), ("local", "patch_features"), ("views", "view_features")):
        old_value, new_value = _alias(f, old, new)
        assert old_value is new_value


def test_n_patches_function_and_deprecated_alias():
    cfg = {"embed_dim": 8, "vision_cfg": {"image_size": 224, "patch_size": 32, "layers": 2, "width": 16},
           "text_cfg": {}}
    assert n_patches(cfg) == 49 and n_patches(cfg, image_size=64) == 4
    with pytest.warns(DeprecationWarning, match="use ssp.backbone.model.n_patches"):
        assert num_local_features(cfg, 64) == 4


@pytest.mark.filterwarnings("ignore:.*RANDOMLY INITIALISED:UserWarning")
def test_backbone_deprecated_aliases():
    from ssp.backbone.model import load_backbone

    tiny_vit = load_backbone(str(ASSETS / "tiny-vit.json"), device="cpu")
    assert _alias(tiny_vit, "embed_dim", "n_features") == (tiny_vit.n_features, tiny_vit.n_features)
    assert _alias(tiny_vit, "num_local_features", "n_patches") == (tiny_vit.n_patches, tiny_vit.n_patches)


def test_duck_typed_backbone_with_old_names_still_extracts():
    """A user's own backbone with the old attribute names keeps working, with a warning."""
    from ssp.features.extract import _backbone_shape

    class Old:
        embed_dim, num_local_features = 7, 3

    class New:
        n_features, n_patches = 7, 3

    with pytest.warns(DeprecationWarning, match="n_features"):
        assert _backbone_shape(Old()) == (7, 3)
    assert _backbone_shape(New()) == (7, 3)


def test_feature_key_with_local_keyword_deprecated():
    from ssp.features.store import feature_key

    class Bb:
        identity, precision = {"model": "toy"}, "fp32"

        @staticmethod
        def transform_identity(train):
            return {"train": train}

    samples = []
    new = feature_key(Bb(), samples, dataset="toy", split="train", with_patches=True)
    with pytest.warns(DeprecationWarning, match="'with_local' is deprecated; use 'with_patches'"):
        old = feature_key(Bb(), samples, dataset="toy", split="train", with_local=True)
    assert old == new and new["with_local"] is True  # the file's key field keeps its name

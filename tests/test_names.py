"""One name per concept: the public names are the only names (no deprecated aliases: nothing was
released under the old ones), and ``Features`` uses the project's field names."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from ssp.backbone import model as backbone_model
from ssp.backbone.model import n_patches
from ssp.features.types import Features

ASSETS = Path(__file__).parent / "assets"
SSP = Path(__file__).resolve().parents[1] / "ssp"


def test_features_field_names_and_file_tensor_names():
    names = [f.name for f in dataclasses.fields(Features)]
    assert names == ["image_features", "labels", "patch_features", "view_features", "kept"]
    g, p, v = torch.randn(4, 3), torch.randn(4, 2, 3), torch.randn(2, 4, 3)
    f = Features.from_dict({"global": g, "labels": torch.arange(4).int(), "local": p, "views": v})
    assert f.image_features is g and f.patch_features is p and f.view_features is v and f.kept is None
    assert f.labels.dtype == torch.int64
    assert not any(hasattr(f, old) for old in ("global_", "local", "views"))


def test_n_patches_is_the_only_name():
    cfg = {"embed_dim": 8, "vision_cfg": {"image_size": 224, "patch_size": 32, "layers": 2, "width": 16},
           "text_cfg": {}}
    assert n_patches(cfg) == 49 and n_patches(cfg, image_size=64) == 4
    assert not hasattr(backbone_model, "num_local_features")


@pytest.mark.filterwarnings("ignore:.*RANDOMLY INITIALISED:UserWarning")
def test_backbone_has_no_old_attribute_names():
    tiny_vit = backbone_model.load_backbone(str(ASSETS / "tiny-vit.json"), device="cpu")
    assert tiny_vit.n_features > 0 and tiny_vit.n_patches > 0
    assert not hasattr(tiny_vit, "embed_dim") and not hasattr(tiny_vit, "num_local_features")


def test_feature_key_takes_with_patches_only():
    from ssp.features.store import feature_key

    class Bb:
        identity, precision = {"model": "toy"}, "fp32"

        @staticmethod
        def transform_identity(train):
            return {"train": train}

    key = feature_key(Bb(), [], dataset="toy", split="train", with_patches=True)
    assert key["with_local"] is True  # the file format's key field keeps its name
    with pytest.raises(TypeError):
        feature_key(Bb(), [], dataset="toy", split="train", with_local=True)


@pytest.mark.parametrize("path", sorted(SSP.rglob("*.py")), ids=lambda p: str(p.relative_to(SSP)))
def test_no_deprecated_aliases_in_the_package(path):
    text = path.read_text()
    assert not re.search(r"DeprecationWarning|deprecated_alias", text), f"{path} keeps a deprecated alias"

"""Reading Tip-Adapter / APE cache folders: synthetic folders for every error path, then the real
CLIP ViT-B/32 caches in shared/data (skipped when absent)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssp.features.tip_cache import (
    TipAdapterCache,
    available_shots,
    load_tip_adapter_cache,
)
from ssp.methods.cache_models import APE, TipAdapter
from ssp.methods import make_grid, validation_search
from ssp.methods.zero_shot import ZeroShotCLIP


def write_cache(folder: Path, *, n_classes=4, shots=2, dim=8, block_order=(2, 0, 3, 1),
                with_text=True, with_test=True, seed=0):
    """A cache folder in the published layout: keys [D, N] fp16, values [N, C] fp16 one-hot,
    samples grouped by class in an arbitrary class order."""
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = torch.tensor([c for c in block_order for _ in range(shots)])
    keys = torch.randn(len(labels), dim, generator=gen)
    torch.save(keys.T.half(), folder / f"keys_{shots}shots.pt")
    values = torch.nn.functional.one_hot(labels, n_classes).half()
    torch.save(values, folder / f"values_{shots}shots.pt")
    for split, n in (("val", 10), ("test", 7)):
        if split == "test" and not with_test:
            continue
        torch.save(torch.randn(n, dim, generator=gen).half(), folder / f"{split}_f.pt")
        torch.save(torch.randint(0, n_classes, (n,), generator=gen), folder / f"{split}_l.pt")
    text = torch.randn(dim, n_classes, generator=gen)
    if with_text:
        torch.save(text, folder / "text_weights.pt")
    return keys, labels, text


# ----------------------------------------------------------------------------- synthetic folders


def test_round_trip(tmp_path):
    keys, labels, text = write_cache(tmp_path / "ds", shots=3)
    cache = load_tip_adapter_cache(tmp_path / "ds", 3)
    assert isinstance(cache, TipAdapterCache) and cache.shots == 3 and cache.n_classes == 4
    assert cache.support_features.dtype == torch.float32 and cache.support_labels.dtype == torch.int64
    torch.testing.assert_close(cache.support_features, keys.half().float())
    torch.testing.assert_close(cache.support_labels, labels)  # file order is kept
    torch.testing.assert_close(cache.text_features, text.T)
    assert cache.val_features.shape == (10, 8) and cache.test_labels.shape == (7,)
    assert cache.text_weights_file == "text_weights.pt" and cache.n_features == 8
    assert available_shots(tmp_path / "ds") == [3]


def test_absent_optional_files_are_none(tmp_path):
    write_cache(tmp_path / "ds", with_text=False, with_test=False)
    cache = load_tip_adapter_cache(tmp_path / "ds", 2)
    assert cache.text_features is None and cache.text_weights_file is None
    assert cache.test_features is None and cache.test_labels is None
    assert cache.val_features is not None


def test_missing_folder_and_shots(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tip_adapter_cache(tmp_path / "nope", 1)
    write_cache(tmp_path / "ds", shots=2)
    write_cache(tmp_path / "ds", shots=4)
    with pytest.raises(FileNotFoundError, match=r"keys_8shots.pt not found \(shot counts present: \[2, 4\]\)"):
        load_tip_adapter_cache(tmp_path / "ds", 8)
    (tmp_path / "ds" / "values_4shots.pt").unlink()
    with pytest.raises(FileNotFoundError, match="values_4shots.pt not found"):
        load_tip_adapter_cache(tmp_path / "ds", 4)
    with pytest.raises(ValueError, match="positive int"):
        load_tip_adapter_cache(tmp_path / "ds", 0)


def _write_bytes(name, data):
    return lambda folder: (folder / name).write_bytes(data)


def _save(name, value):
    return lambda folder: torch.save(value, folder / name)


def _unlink(name):
    return lambda folder: (folder / name).unlink()


@pytest.mark.parametrize("damage,error,match", [
    (_write_bytes("val_f.pt", b"not a pickle"), ValueError,
     r"val_f.pt is not a tensor file: corrupt or not saved by torch.save$"),
    # starts like a pickle, so torch's unpickler reads it: still one line, no weights_only advice
    (_write_bytes("val_f.pt", b"\x80\x02" + bytes(range(256)) * 4), ValueError,
     r"^[^\n]*val_f.pt is not a tensor file: corrupt[^\n]*$"),
    (_save("val_f.pt", torch.randn(10, 5)), ValueError,
     r"val_f.pt has shape \(10, 5\); expected \[samples, D\] with D = 8"),
    (_save("val_l.pt", torch.zeros(4, dtype=torch.int64)), ValueError,
     r"val_l.pt has 4 entries but there are 10 samples in val_f.pt"),
    (_save("val_l.pt", torch.zeros(10, 2, dtype=torch.int64)), ValueError, r"val_l.pt must have 1 dim"),
    (_save("val_l.pt", torch.full((10,), 9)), ValueError,
     r"val_l.pt contains class 9 but only 4 classes .* \(the values file has 4 rows\)"),
    (_save("val_l.pt", torch.full((10,), 1.5)), ValueError, r"val_l.pt must be integer class indices"),
    (_unlink("test_l.pt"), FileNotFoundError, "test split needs both"),
    (_save("values_2shots.pt", torch.ones(8, 4)), ValueError, "not one-hot"),  # right shape
    (_save("values_2shots.pt", torch.eye(4)), ValueError,
     r"values_2shots.pt has shape \(4, 4\) but keys_2shots.pt holds 8"),
    (_save("text_weights.pt", torch.randn(8, 3)), ValueError, r"expected \[D, C\] = \[8, 4\]"),
    (_save("text_weights.pt", torch.zeros(8, 4)), ValueError, r"text_weights.pt rows \[0, 1, 2, 3\] .* are all zero"),
    (_save("test_f.pt", {"not": "a tensor"}), ValueError, "holds a dict"),
], ids=["unreadable", "random-pickle-bytes", "feature-width", "label-count", "label-shape", "label-range", "label-float",
        "half-split", "not-one-hot", "values-rows", "text-shape", "text-zero", "not-a-tensor"])
def test_corrupt_and_inconsistent_files(tmp_path, damage, error, match):
    folder = tmp_path / "ds"
    write_cache(folder)
    load_tip_adapter_cache(folder, 2)  # intact, it loads
    damage(folder)
    with pytest.raises(error, match=match):
        load_tip_adapter_cache(folder, 2)

    write_cache(folder)
    keys = torch.randn(8, 8)
    keys[0, 0] = float("nan")
    torch.save(keys, folder / "keys_2shots.pt")
    with pytest.raises(ValueError, match="NaN"):
        load_tip_adapter_cache(folder, 2)


def test_several_text_classifiers_need_a_choice(tmp_path):
    folder = tmp_path / "ds"
    _, _, text = write_cache(folder)
    torch.save(-text, folder / "text_weights_cupl_t.pt")
    with pytest.raises(ValueError, match="several text classifiers"):
        load_tip_adapter_cache(folder, 2)
    cache = load_tip_adapter_cache(folder, 2, text_weights="text_weights_cupl_t.pt")
    torch.testing.assert_close(cache.text_features, -text.T)
    with pytest.raises(FileNotFoundError, match="missing.pt not found"):
        load_tip_adapter_cache(folder, 2, text_weights="missing.pt")


# ----------------------------------------------------------------------------- real caches

DATASETS = {"caltech101": 100, "oxford_flowers": 102, "oxford_pets": 37, "stanford_cars": 196}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_real_caches_load(tip_cache_root, dataset):
    folder = tip_cache_root / dataset
    assert available_shots(folder) == [1, 2, 4, 8, 16]
    for shots in (1, 2, 4, 8, 16):
        cache = load_tip_adapter_cache(folder, shots)
        n_classes = DATASETS[dataset]
        assert cache.n_classes == n_classes and cache.n_features == 512
        assert cache.support_features.shape == (n_classes * shots, 512)
        # grouped by class: every class is one contiguous block of exactly `shots` samples
        blocks = cache.support_labels.view(n_classes, shots)
        assert bool((blocks == blocks[:, :1]).all())
        assert sorted(blocks[:, 0].tolist()) == list(range(n_classes))
        assert cache.val_features.shape[1] == 512
        assert (cache.text_features is not None) == (dataset == "stanford_cars")
        assert (cache.test_features is None) == (dataset == "stanford_cars")
    if dataset == "stanford_cars":
        # the class blocks are not in label order (the first block is class 13)
        assert cache.support_labels[0].item() == 13


def _half_split(n: int, seed: int = 0):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2], perm[n // 2:]


def test_stanford_cars_tip_and_ape_beat_zero_shot(tip_cache_root):
    """16 shots, real CLIP ViT-B/32 features: search on half of the published val split, score
    on the other half (never seen by the search)."""
    cache = load_tip_adapter_cache(tip_cache_root / "stanford_cars", 16)
    search_idx, held_idx = _half_split(cache.val_labels.shape[0])
    x_search, y_search = cache.val_features[search_idx], cache.val_labels[search_idx]
    x_held, y_held = cache.val_features[held_idx], cache.val_labels[held_idx]
    support, labels, text = cache.support_features, cache.support_labels, cache.text_features

    zero_shot = ZeroShotCLIP().fit(text_features=text).score(x_held, y_held)
    tip = TipAdapter().fit(support, labels, text_features=text)
    validation_search(tip, x_search, y_search, make_grid("tip-adapter", (20, 10), (50, 10)))
    ape = APE(n_channels=500, criterion_weights=(0.6, 0.4)).fit(support, labels,
                                                                 text_features=text)
    validation_search(ape, x_search, y_search, make_grid("ape", (10, 7, 1), (50, 10, 10)))
    tip_acc, ape_acc = tip.score(x_held, y_held), ape.score(x_held, y_held)
    assert 0.55 < zero_shot < 0.63  # 58.96 % on the whole val split (data README)
    assert tip_acc > zero_shot + 0.05
    assert ape_acc > zero_shot + 0.05


def test_stanford_cars_ssp_on_real_features(tip_cache_root):
    """SSP on real CLIP features. Real local features are not published, so each support image's
    global feature stands in for its local features (L = 1, the case measured in docs/method.md).
    At the numerical rank every text row lies in its own class subspace (P_c w_c = w_c), and the
    routing chosen on validation must not lose to plain Tip-Adapter on held-out data."""
    from ssp.methods.ssp.projector import SSPProjector

    cache = load_tip_adapter_cache(tip_cache_root / "stanford_cars", 4)
    search_idx, held_idx = _half_split(cache.val_labels.shape[0])
    x_search, y_search = cache.val_features[search_idx], cache.val_labels[search_idx]
    x_held, y_held = cache.val_features[held_idx], cache.val_labels[held_idx]
    support, labels, text = cache.support_features.float(), cache.support_labels, cache.text_features.float()

    proj = SSPProjector().fit(support[:, None], labels, image_features=support, text_features=text)
    assert proj.class_ranks_.tolist() == [5] * cache.n_classes  # 4 shots x 1 local feature + the text row
    unit_text = text / text.norm(dim=1, keepdim=True)
    assert torch.allclose(proj.text_features_, unit_text, atol=1e-4)

    grid = make_grid("tip-adapter", (20, 10), (50, 10))
    tip = TipAdapter().fit(support, labels, text_features=text)
    validation_search(tip, x_search, y_search, grid)
    ssp = TipAdapter(projector=proj).fit(support, labels, text_features=text)
    result = validation_search(ssp, x_search, y_search, {"routing": ["paper", "vision", "reference"], **grid})
    assert result.scores_.shape == (3, 50, 10)
    assert result.best_params_["routing"] == "vision"  # "paper" collapses at L = 1 (docs/method.md)
    assert ssp.score(x_held, y_held) >= tip.score(x_held, y_held) - 0.01

"""Tests for ssp.features: the feature store, extraction and cached extraction."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_backbone import FakeBackbone, _write_images
from PIL import Image

from ssp._utils.normalize import l2_normalize
from ssp.data import Sample
from ssp.features.extract import _view_seed, extract_features
from ssp.features.store import (
    FeatureStore,
    FeatureStoreWarning,
    cached_features,
    feature_key,
    sample_digest,
)

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Test doubles
# --------------------------------------------------------------------------------------------

@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    return _write_images(tmp_path / "images")


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "cache")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


QUIET = dict(progress=False, num_workers=0)


# --------------------------------------------------------------------------------------------
# FeatureStore
# --------------------------------------------------------------------------------------------

def test_default_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SSP_FEATURE_STORE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert FeatureStore.default_root() == tmp_path / "a"
    assert FeatureStore().root == tmp_path / "a"
    monkeypatch.delenv("SSP_FEATURE_STORE")
    assert FeatureStore.default_root() == tmp_path / "xdg" / "ssp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert FeatureStore.default_root() == tmp_path / "home" / ".cache" / "ssp"
    assert FeatureStore(tmp_path / "b").root == tmp_path / "b"


def test_path_for_is_canonical(store):
    import hashlib

    key = {"kind": "features", "b": [1, 2], "a": {"y": 1, "x": 2}}
    same = {"a": {"x": 2, "y": 1}, "b": [1, 2], "kind": "features"}
    path = store.path_for(key)
    assert path == store.path_for(same)
    assert path.parent == store.root / "features"
    canon = json.dumps(key, sort_keys=True, separators=(",", ":"))
    assert path.name == hashlib.sha256(canon.encode()).hexdigest() + ".safetensors"
    assert store.path_for({**key, "b": [2, 1]}) != path
    assert store.path_for({"namespace": "features/dtd", "x": 1}).parent == store.root / "features" / "dtd"
    assert store.path_for({"namespace": "../../etc", "x": 1}).resolve().is_relative_to(store.root.resolve())
    with pytest.raises(TypeError, match="JSON"):
        store.path_for({"kind": "x", "bad": object()})


def test_save_load_roundtrip(store):
    key = {"kind": "t", "v": 1}
    assert store.load(key) is None
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, 2).half()}
    path = store.save(key, tensors)
    assert path == store.path_for(key) and path.is_file()
    got = store.load(key)
    assert set(got) == set(tensors)
    for name in tensors:
        assert got[name].dtype == tensors[name].dtype
        assert torch.equal(got[name], tensors[name])
    assert [p.name for p in _files(store.root)] == [path.name]  # no temp file left


def test_save_tensors_sharing_memory(store):
    base = torch.randn(4, 3)
    store.save({"kind": "t"}, {"all": base, "head": base[:2], "row": base[1]})
    got = store.load({"kind": "t"})
    assert torch.equal(got["head"], base[:2]) and torch.equal(got["row"], base[1])


def test_get_or_compute_hit_miss_and_recompute(store):
    key = {"kind": "t"}
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.full((2,), float(len(calls)))}

    first = store.get_or_compute(key, compute)
    second = store.get_or_compute(key, compute)
    assert len(calls) == 1 and torch.equal(first["x"], second["x"])
    third = store.get_or_compute(key, compute, recompute=True)
    assert len(calls) == 2 and torch.equal(third["x"], torch.full((2,), 2.0))
    assert torch.equal(store.load(key)["x"], third["x"])


@pytest.mark.parametrize("cut", ["header", "data", "empty"])
def test_truncated_file_warns_and_returns_none(store, cut):
    key = {"kind": "t"}
    path = store.save(key, {"x": torch.randn(100, 10)})
    data = path.read_bytes()
    keep = {"header": 20, "data": len(data) - 7, "empty": 0}[cut]
    path.write_bytes(data[:keep])
    with pytest.warns(FeatureStoreWarning, match=re.escape(str(path))):
        assert store.load(key) is None


def test_garbage_file_warns(store):
    key = {"kind": "t"}
    path = store.path_for(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00" * 64 + b"not a safetensors file")
    with pytest.warns(FeatureStoreWarning, match="unreadable"):
        assert store.load(key) is None
    # get_or_compute rebuilds it
    with pytest.warns(FeatureStoreWarning):
        out = store.get_or_compute(key, lambda: {"x": torch.ones(3)})
    assert torch.equal(out["x"], torch.ones(3))
    assert torch.equal(store.load(key)["x"], torch.ones(3))


def test_wrong_key_under_right_name_is_rejected(store):
    key_a, key_b = {"kind": "t", "v": "a"}, {"kind": "t", "v": "b"}
    path_a = store.save(key_a, {"x": torch.zeros(2)})
    shutil.copy(path_a, store.path_for(key_b))
    with pytest.warns(FeatureStoreWarning, match="stored key differs"):
        assert store.load(key_b) is None
    assert store.load(key_a) is not None


def test_foreign_safetensors_file_is_rejected(store):
    from safetensors.torch import save_file

    key = {"kind": "t"}
    path = store.path_for(key)
    path.parent.mkdir(parents=True)
    save_file({"x": torch.zeros(2)}, str(path))  # no ssp metadata
    with pytest.warns(FeatureStoreWarning, match="not an ssp feature-store file"):
        assert store.load(key) is None


def test_failing_compute_leaves_nothing(store):
    def compute():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.get_or_compute({"kind": "t"}, compute)
    assert not store.root.exists() or _files(store.root) == []


def test_exception_during_write_leaves_no_file(store, monkeypatch):
    import ssp.features.store as cache_mod

    real_save_file = cache_mod.save_file

    def half_write(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod, "save_file", half_write)
    key = {"kind": "t"}
    with pytest.raises(OSError, match="disk full"):
        store.save(key, {"x": torch.randn(50, 50)})
    assert not store.path_for(key).exists()
    assert _files(store.root) == []  # the temp file is gone too

    # A failing rename (the last step) also leaves nothing, not even the complete temp file.
    monkeypatch.setattr(cache_mod, "save_file", real_save_file)

    def bad_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(cache_mod.os, "replace", bad_replace)
    with pytest.raises(OSError, match="rename failed"):
        store.save(key, {"x": torch.randn(50, 50)})
    assert _files(store.root) == []


def test_existing_file_survives_failed_overwrite(store, monkeypatch):
    import ssp.features.store as cache_mod

    key = {"kind": "t"}
    store.save(key, {"x": torch.ones(4)})

    def failing(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("interrupted")

    monkeypatch.setattr(cache_mod, "save_file", failing)
    with pytest.raises(OSError):
        store.save(key, {"x": torch.zeros(4)})
    assert torch.equal(store.load(key)["x"], torch.ones(4))
    assert len(_files(store.root)) == 1


def test_crash_leftover_temp_is_ignored_and_cleaned(store):
    key = {"kind": "t"}
    path = store.path_for(key)
    path.parent.mkdir(parents=True)
    old = path.parent / f".{path.stem}.999.deadbeef.tmp"
    fresh = path.parent / f".{path.stem}.998.cafebabe.tmp"
    old.write_bytes(b"half written")
    fresh.write_bytes(b"being written by another process")
    an_hour_ago = time.time() - 2 * 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.load(key) is None  # temp files are invisible
    store.save(key, {"x": torch.ones(1)})
    assert not old.exists()      # stale leftover removed
    assert fresh.exists()        # a recent one may belong to a concurrent writer


def test_save_rejects_bad_input(store):
    with pytest.raises(ValueError, match="empty"):
        store.save({"kind": "t"}, {})
    with pytest.raises(TypeError, match="torch.Tensor"):
        store.save({"kind": "t"}, {"x": np.zeros(3)})


def test_get_or_compute_validates_fresh_results(store):
    def validate(t):
        return None if t["x"].shape == (3,) else f"wrong shape {tuple(t['x'].shape)}"

    with pytest.raises(ValueError, match="wrong shape"):
        store.get_or_compute({"kind": "t"}, lambda: {"x": torch.zeros(2)}, validate=validate)
    assert not store.path_for({"kind": "t"}).exists()


# --------------------------------------------------------------------------------------------
# extract_features
# --------------------------------------------------------------------------------------------

def test_extract_shapes_dtypes_and_norms(samples):
    bb = FakeBackbone()
    out = extract_features(bb, samples, with_patches=True, batch_size=4, **QUIET)
    n = len(samples)
    assert set(out) == {"global", "labels", "local"}
    assert out["global"].shape == (n, 8) and out["global"].dtype == torch.float32
    assert out["local"].shape == (n, 4, 8) and out["local"].dtype == torch.float32
    assert out["labels"].dtype == torch.int64
    assert out["labels"].tolist() == [s.label for s in samples]
    torch.testing.assert_close(out["global"].norm(dim=-1), torch.ones(n))
    torch.testing.assert_close(out["local"].norm(dim=-1), torch.ones(n, 4))
    assert bb.calls == 2  # 6 images, batch 4
    without = extract_features(bb, samples, batch_size=4, **QUIET)
    assert set(without) == {"global", "labels"}
    assert torch.equal(without["global"], out["global"])


def test_single_view_matches_manual_eval_transform(samples):
    bb = FakeBackbone()
    out = extract_features(bb, samples, with_patches=True, batch_size=5, **QUIET)
    images = torch.stack([bb.preprocess(Image.open(s.path).convert("RGB")) for s in samples])
    g, loc = bb.encode_images(images)
    torch.testing.assert_close(out["global"], l2_normalize(g))
    torch.testing.assert_close(out["local"], l2_normalize(loc))


def test_views_average_raw_then_normalise(samples):
    """views > 1: mean of raw features over augmented passes, then L2 normalisation."""
    bb = FakeBackbone()
    views, seed = 3, 7
    out = extract_features(bb, samples, views=views, with_patches=True, seed=seed, batch_size=4,
                           **QUIET)
    raw_g, raw_l = [], []
    for v in range(views):
        imgs = []
        for i, s in enumerate(samples):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_view_seed(seed, v, i))
                imgs.append(bb.augment(Image.open(s.path).convert("RGB")))
        g, loc = bb.encode_images(torch.stack(imgs))
        raw_g.append(g)
        raw_l.append(loc)
    raw_g, raw_l = torch.stack(raw_g), torch.stack(raw_l)  # views, N, ...
    expected_g = l2_normalize(raw_g.mean(0))
    expected_l = l2_normalize(raw_l.mean(0))
    torch.testing.assert_close(out["global"], expected_g)
    torch.testing.assert_close(out["local"], expected_l)
    # The other order (normalise each view, then average) is measurably different here,
    # so the assertion above does discriminate the two semantics.
    other = l2_normalize(l2_normalize(raw_g).mean(0))
    assert (other - expected_g).abs().max() > 1e-3
    # Views really differ from each other (the augmentation is applied per pass).
    assert (raw_g[0] - raw_g[1]).abs().max() > 1e-3


def test_views_deterministic_across_workers_and_batches(samples):
    bb = FakeBackbone()
    kw = dict(views=3, with_patches=True, seed=3, progress=False)
    ref = extract_features(bb, samples, num_workers=0, batch_size=4, **kw)
    again = extract_features(bb, samples, num_workers=0, batch_size=4, **kw)
    workers = extract_features(bb, samples, num_workers=2, batch_size=4, **kw)
    for name in ref:
        assert torch.equal(ref[name], again[name]), name
        assert torch.equal(ref[name], workers[name]), name
    # another batch layout sees the same augmented images (up to matmul rounding)
    rebatched = extract_features(bb, samples, num_workers=2, batch_size=5, **kw)
    for name in ref:
        torch.testing.assert_close(rebatched[name], ref[name], atol=1e-6, rtol=1e-5)
    other_seed = extract_features(bb, samples, num_workers=0, batch_size=4,
                                  **{**kw, "seed": 4})
    assert not torch.allclose(other_seed["global"], ref["global"])


def test_extraction_leaves_global_rng_alone(samples):
    bb = FakeBackbone()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    extract_features(bb, samples, views=2, batch_size=4, **QUIET)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_image_error_names_path(samples, num_workers):
    bad = Path(samples[3].path)
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(Exception, match=re.escape(str(bad))):
        extract_features(FakeBackbone(), samples, batch_size=2, num_workers=num_workers,
                         progress=False)


def test_extract_rejects_bad_arguments(samples):
    bb = FakeBackbone()
    with pytest.raises(ValueError, match="views"):
        extract_features(bb, samples, views=0, **QUIET)
    with pytest.raises(ValueError, match="empty"):
        extract_features(bb, [], **QUIET)


def test_backbone_shape_mismatch_is_reported(samples):
    bb = FakeBackbone()
    bb.n_patches = 5  # lies about L
    with pytest.raises(RuntimeError, match="local features of shape"):
        extract_features(bb, samples, with_patches=True, **QUIET)


# --------------------------------------------------------------------------------------------
# sample_digest / cached_features
# --------------------------------------------------------------------------------------------

def test_sample_digest(tmp_path, samples):
    d = sample_digest(samples)
    assert d == sample_digest(list(samples))
    # relocating the whole image folder keeps the digest
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "images", moved)
    relocated = [Sample(s.path.replace(str(tmp_path / "images"), str(moved)), s.label, s.classname)
                 for s in samples]
    assert sample_digest(relocated) == d
    # order, labels, membership and file contents (size) all change it
    assert sample_digest(samples[::-1]) != d
    assert sample_digest([Sample(samples[0].path, 2, "x")] + samples[1:]) != d
    assert sample_digest(samples[:-1]) != d
    with open(moved / Path(samples[0].path).relative_to(tmp_path / "images"), "ab") as f:
        f.write(b"\x00" * 10)
    assert sample_digest(relocated) != d
    missing = Sample(str(tmp_path / "nope.jpg"), 0, "x")  # counted as missing; reading it names it later
    absent = sample_digest(samples + [missing])
    assert absent != d
    (tmp_path / "nope.jpg").write_bytes(b"")
    assert sample_digest(samples + [missing]) != absent  # an empty file is not a missing one


def test_cache_hit_skips_backbone_and_is_identical(store, samples):
    bb = FakeBackbone()
    first = cached_features(store, bb, samples, dataset="toy", split="train", with_patches=True,
                            batch_size=4, **QUIET)
    calls = bb.calls
    assert calls > 0
    second = cached_features(store, bb, samples, dataset="toy", split="train", with_patches=True,
                             batch_size=4, **QUIET)
    assert bb.calls == calls
    assert set(first) == set(second) == {"global", "labels", "local"}
    for name in first:
        assert first[name].dtype == second[name].dtype
        assert torch.equal(first[name], second[name]), name
    assert first["global"].dtype == torch.float32 and first["local"].dtype == torch.float32
    assert first["labels"].dtype == torch.int64
    # local features are stored as float16 and differ from full precision only by rounding
    full = extract_features(bb, samples, with_patches=True, **QUIET)
    torch.testing.assert_close(first["global"], full["global"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(first["local"], full["local"], atol=1e-3, rtol=0)
    from safetensors import safe_open

    files = _files(store.root)
    assert len(files) == 1 and files[0].parent == store.root / "features" / "toy"
    with safe_open(str(files[0]), framework="pt") as f:
        assert f.get_slice("local").get_dtype() == "F16"
        assert f.get_slice("global").get_dtype() == "F32"


def test_cache_invalidation(store, samples, tmp_path):
    bb = FakeBackbone()
    kw = dict(dataset="toy", split="train", batch_size=8, **QUIET)

    def run(backbone=bb, s=samples, **extra):
        before = backbone.calls
        cached_features(store, backbone, s, **{**kw, **extra})
        return backbone.calls > before  # True: recomputed

    assert run()
    assert not run()
    assert not run(seed=5)                 # seed is irrelevant for the eval transform
    assert run(views=2)                    # views
    assert not run(views=2)
    assert run(views=2, seed=1)            # seed matters with augmentation
    assert run(with_patches=True)            # local features requested
    assert run(s=samples[:-1])             # samples removed
    assert run(s=samples[::-1])            # order
    relabelled = [Sample(samples[0].path, 1, "class1")] + samples[1:]
    assert run(s=relabelled)               # labels
    assert run(split="val")                # split
    assert run(dataset="other")            # dataset
    other = FakeBackbone(tag="fake-b")
    assert run(backbone=other)             # backbone identity
    bigger = FakeBackbone(crop=48)
    assert run(backbone=bigger)            # transform identity
    Path(samples[2].path).write_bytes(Path(samples[2].path).read_bytes() + b"\x00" * 16)
    assert run()                           # an image file replaced
    assert not run()
    assert run(recompute=True)             # forced
    # each distinct key has its own file
    assert len(_files(store.root)) == 12


def test_feature_key_contents(samples):
    bb = FakeBackbone()
    key = feature_key(bb, samples, dataset="toy", split="train", views=10, seed=2,
                      with_patches=True)
    assert key["backbone"] == bb.identity
    assert key["transform"] == bb.transform_identity(train=True)
    assert key["samples"] == sample_digest(samples) and key["num_samples"] == len(samples)
    assert (key["views"], key["seed"], key["with_local"]) == (10, 2, True)
    assert "format" in key
    eval_key = feature_key(bb, samples, dataset="toy", split="test", seed=2)
    assert eval_key["seed"] == 0 and eval_key["transform"] == bb.transform_identity(train=False)


def test_truncated_cache_file_is_rebuilt(store, samples):
    bb = FakeBackbone()
    kw = dict(dataset="toy", split="train", with_patches=True, batch_size=8, **QUIET)
    first = cached_features(store, bb, samples, **kw)
    (path,) = _files(store.root)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    calls = bb.calls
    with pytest.warns(FeatureStoreWarning, match=re.escape(str(path))):
        rebuilt = cached_features(store, bb, samples, **kw)
    assert bb.calls > calls
    for name in first:
        assert torch.equal(first[name], rebuilt[name])
    calls = bb.calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached_features(store, bb, samples, **kw)  # the rebuilt file is good
    assert bb.calls == calls


@pytest.mark.parametrize("damage", ["shape", "labels", "missing", "dtype", "nan"])
def test_inconsistent_cache_content_is_rebuilt(store, samples, damage):
    """A file with the right key but wrong content (e.g. written by a buggy version)."""
    bb = FakeBackbone()
    kw = dict(dataset="toy", split="train", with_patches=True)
    key = feature_key(bb, samples, **kw)
    n = len(samples)
    good = {"global": l2_normalize(torch.randn(n, 8)), "labels": torch.tensor([s.label for s in samples]),
            "local": l2_normalize(torch.randn(n, 4, 8)).half()}
    bad = dict(good)
    if damage == "shape":
        bad["local"] = good["local"][:, :3]
    elif damage == "labels":
        bad["labels"] = good["labels"].roll(1)
    elif damage == "missing":
        del bad["local"]
    elif damage == "dtype":
        bad["global"] = good["global"].double()
    else:
        bad["global"] = good["global"].clone()
        bad["global"][0, 0] = float("nan")
    store.save(key, bad)
    with pytest.warns(FeatureStoreWarning, match=re.escape(str(store.path_for(key)))):
        out = cached_features(store, bb, samples, batch_size=8, **QUIET, **kw)
    assert bb.calls > 0
    assert out["local"].shape == (n, 4, 8) and bool(torch.isfinite(out["global"]).all())


def test_cached_features_rejects_key_changing_kwargs(store, samples):
    with pytest.raises(TypeError, match="local_dtype"):
        cached_features(store, FakeBackbone(), samples, dataset="toy", split="train",
                        local_dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Integration: real images, real open_clip backbone
# --------------------------------------------------------------------------------------------

def _dtd_samples(data_root: Path, per_class: int = 2, classes: int = 3) -> list[Sample]:
    split = data_root / "coop" / "dtd" / "split_zhou_DescribableTextures.json"
    if not split.is_file():
        pytest.skip(f"{split} not found")
    items = json.loads(split.read_text())["train"]
    out, counts = [], {}
    for rel, label, name in items:
        if label < classes and counts.get(label, 0) < per_class:
            counts[label] = counts.get(label, 0) + 1
            out.append(Sample(str(data_root / "coop" / "dtd" / "images" / rel), label, name))
    return out


def test_real_dtd_images_with_fake_backbone(data_root, store):
    samples = _dtd_samples(data_root)
    bb = FakeBackbone()
    out = cached_features(store, bb, samples, dataset="dtd", split="train", views=2,
                          with_patches=True, progress=False, num_workers=2, batch_size=4)
    assert out["global"].shape == (len(samples), 8)
    assert out["labels"].tolist() == [s.label for s in samples]
    calls = bb.calls
    again = cached_features(store, bb, samples, dataset="dtd", split="train", views=2,
                            with_patches=True, progress=False)
    assert bb.calls == calls and torch.equal(again["local"], out["local"])


@pytest.mark.parametrize("config", ["tiny-rn.json", "tiny-vit.json"])
def test_real_open_clip_backbone(tmp_path, store, config):
    import ssp.backbone.model as backbone_mod

    cfg = REPO / "tests" / "assets" / config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loud "randomly initialised" warning is expected
        bb = backbone_mod.load_backbone(str(cfg), pretrained=None, device="cpu")
    samples = _write_images(tmp_path / "imgs", n=4, classes=2)
    kw = dict(dataset="toy", split="train", views=2, with_patches=True, seed=1, batch_size=3,
              progress=False, num_workers=0)
    out = cached_features(store, bb, samples, **kw)
    n, d, L = len(samples), bb.n_features, bb.n_patches
    assert out["global"].shape == (n, d) and out["local"].shape == (n, L, d)
    torch.testing.assert_close(out["global"].norm(dim=-1), torch.ones(n))
    torch.testing.assert_close(out["local"].norm(dim=-1), torch.ones(n, L), atol=2e-3, rtol=0)
    again = cached_features(store, bb, samples, **{**kw, "num_workers": 2})
    assert torch.equal(again["global"], out["global"])
    # the same numbers with workers when recomputed (seeded augmentation)
    fresh = cached_features(store, bb, samples, **{**kw, "num_workers": 2}, recompute=True)
    assert torch.equal(fresh["global"], out["global"])
    assert torch.equal(fresh["local"], out["local"])
    # eval features match a manual forward pass of the eval transform
    ev = extract_features(bb, samples, progress=False, num_workers=0)
    imgs = torch.stack([bb.preprocess(Image.open(s.path).convert("RGB")) for s in samples])
    g, _ = bb.encode_images(imgs.to(bb.device))
    torch.testing.assert_close(ev["global"], l2_normalize(g.float()), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Per-view features, format version, unreadable images
# --------------------------------------------------------------------------------------------

def test_views_kept_per_pass(samples):
    """views > 1: each pass's global feature is returned ([E, N, D], L2-normalised); the keys are
    the normalised mean of the raw passes, so they lie in the views' span."""
    bb = FakeBackbone()
    out = extract_features(bb, samples, views=3, seed=7, batch_size=4, **QUIET)
    n = len(samples)
    assert out["views"].shape == (3, n, 8) and out["views"].dtype == torch.float32
    torch.testing.assert_close(out["views"].norm(dim=-1), torch.ones(3, n))
    raw = []
    for v in range(3):
        imgs = []
        for i, s in enumerate(samples):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_view_seed(7, v, i))
                imgs.append(bb.augment(Image.open(s.path).convert("RGB")))
        raw.append(bb.encode_images(torch.stack(imgs))[0])
    raw = torch.stack(raw)
    torch.testing.assert_close(out["views"], l2_normalize(raw))
    torch.testing.assert_close(out["global"], l2_normalize(raw.mean(0)))
    assert "views" not in extract_features(bb, samples, **QUIET)  # eval transform: no passes
    half = extract_features(bb, samples, views=3, seed=7, batch_size=4, view_dtype=torch.float16, **QUIET)
    assert half["views"].dtype == torch.float16 and torch.equal(half["views"], out["views"].half())


def test_cached_views_roundtrip_and_one_extraction(store, samples):
    bb = FakeBackbone()
    kw = dict(dataset="toy", split="train", views=3, seed=2, with_patches=True, batch_size=4, **QUIET)
    first = cached_features(store, bb, samples, **kw)
    calls = bb.calls
    assert calls == 5  # 18 items / batch 4: one extraction gives keys and views
    second = cached_features(store, bb, samples, **kw)
    assert bb.calls == calls
    assert first["views"].shape == (3, len(samples), 8) and first["views"].dtype == torch.float32
    assert torch.equal(first["views"], second["views"])  # miss and hit: the same (float16-rounded) values
    full = extract_features(bb, samples, views=3, seed=2, batch_size=4, **QUIET)
    assert torch.equal(first["views"], full["views"].half().float())
    assert torch.equal(first["global"], full["global"])
    from safetensors import safe_open

    (path,) = _files(store.root)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("views").get_dtype() == "F16"
        assert f.metadata()["format_version"] == "2"
    assert "views" not in cached_features(store, bb, samples, dataset="toy", split="test", **QUIET)


def test_features_carry_views_through_subset():
    from ssp.features.types import Features

    views = torch.randn(3, 5, 4)
    f = Features.from_dict({"global": torch.randn(5, 4), "labels": torch.arange(5), "views": views})
    sub = f.subset(torch.tensor([4, 1]))
    assert torch.equal(sub.view_features, views[:, [4, 1]]) and sub.patch_features is None
    assert Features(torch.zeros(2, 4), torch.zeros(2)).view_features is None


def test_old_format_file_is_never_read(store, samples):
    """A version-1 file (no per-view features) is rejected by its metadata even under the new key."""
    from safetensors.torch import save_file

    bb = FakeBackbone()
    kw = dict(dataset="toy", split="train", views=2, seed=1)
    key = feature_key(bb, samples, **kw)
    assert key["format"] == 2
    n = len(samples)
    path = store.path_for(key)
    path.parent.mkdir(parents=True)
    old = {"global": l2_normalize(torch.randn(n, 8)), "labels": torch.tensor([s.label for s in samples])}
    save_file(old, str(path), metadata={"format": "ssp-feature-store", "format_version": "1",
                                        "key": json.dumps(key, sort_keys=True, separators=(",", ":"))})
    with pytest.warns(FeatureStoreWarning, match="format version 1"):
        out = cached_features(store, bb, samples, batch_size=8, **QUIET, **kw)
    assert bb.calls > 0 and out["views"].shape == (2, n, 8)
    assert not torch.equal(out["global"], old["global"])
    # a current-version file that lacks the views tensor is rebuilt too
    store.save(key, old)
    with pytest.warns(FeatureStoreWarning, match="missing tensors"):
        assert "views" in cached_features(store, bb, samples, batch_size=8, **QUIET, **kw)


def _break(path: str, how: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 3] if how == "truncate" else b"not an image" * 4)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_image_error_is_one_line_with_the_fix(samples, num_workers):
    from ssp.data import ImageLoadError

    _break(samples[4].path, "truncate")
    with pytest.raises(ImageLoadError) as err:
        extract_features(FakeBackbone(), samples, views=2, batch_size=3, num_workers=num_workers, progress=False)
    message = str(err.value)
    assert "\n" not in message and samples[4].path in message and "skip_bad_images=True" in message
    assert err.value.path == samples[4].path and "truncated" in err.value.reason


def test_skip_bad_images_equals_extracting_the_readable_list(samples):
    bb = FakeBackbone()
    _break(samples[1].path, "truncate")
    _break(samples[4].path, "garbage")
    kw = dict(views=2, seed=3, with_patches=True, batch_size=4, **QUIET)
    out = extract_features(bb, samples, skip_bad_images=True, **kw)
    good = [s for i, s in enumerate(samples) if i not in (1, 4)]
    direct = extract_features(bb, good, **kw)
    assert out["kept"].tolist() == [0, 2, 3, 5]
    for name in direct:
        assert torch.equal(out[name], direct[name]), name  # bit for bit: same batches as the short list
    clean = extract_features(bb, good, skip_bad_images=True, **kw)
    assert clean["kept"].tolist() == [0, 1, 2, 3]
    for s in samples:
        _break(s.path, "garbage")
    with pytest.raises(OSError, match="every other image"):
        extract_features(bb, samples, skip_bad_images=True, **kw)


def test_skip_bad_images_cache_keys(store, samples, tmp_path):
    """Features without the unreadable images are stored under the readable list's key, never the full one;
    a rerun finds them without encoding; replacing the image invalidates the record."""
    bb = FakeBackbone()
    kw = dict(dataset="toy", split="train", views=2, seed=1, batch_size=4, **QUIET)
    pristine = Path(samples[2].path).read_bytes()
    _break(samples[2].path, "truncate")
    from ssp.data import ImageLoadError

    with pytest.raises(ImageLoadError, match=re.escape(samples[2].path)):
        cached_features(store, bb, samples, **kw)
    assert not store.root.exists() or _files(store.root) == []  # nothing written
    out = cached_features(store, bb, samples, skip_bad_images=True, **kw)
    good = samples[:2] + samples[3:]
    assert out["kept"].tolist() == [0, 1, 3, 4, 5] and out["global"].shape == (5, 8)
    assert out["views"].shape == (2, 5, 8) and out["labels"].tolist() == [s.label for s in good]
    assert not store.path_for(feature_key(bb, samples, **{k: kw[k] for k in ("dataset", "split", "views", "seed")})).exists()
    short_key_path = store.path_for(feature_key(bb, good, dataset="toy", split="train", views=2, seed=1))
    assert short_key_path.is_file() and len(_files(store.root)) == 2  # features + the skipped-images record
    calls = bb.calls
    again = cached_features(store, bb, samples, skip_bad_images=True, **kw)
    assert bb.calls == calls and store.hits == 1
    for name in out:
        assert torch.equal(out[name], again[name]), name
    # the readable list on its own finds the same file
    direct = cached_features(store, bb, good, **kw)
    assert bb.calls == calls and torch.equal(direct["global"], out["global"])
    # without skip_bad_images the full list is still an error (the bad image is never silently dropped)
    with pytest.raises(ImageLoadError):
        cached_features(store, bb, samples, **kw)
    # the image is repaired: new file size -> new full key -> every image encoded
    Path(samples[2].path).write_bytes(pristine)
    fixed = cached_features(store, bb, samples, skip_bad_images=True, **kw)
    assert bb.calls > calls and fixed["kept"].tolist() == list(range(6)) and fixed["global"].shape == (6, 8)

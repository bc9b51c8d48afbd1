"""Shared fixtures. Real data lives outside the repo (``$SSP_DATA_ROOT``, default ``../shared/data``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# tests/<package>/ mirror ssp/<package>/; shared helpers (_doubles, _dtd_subset) live in tests/
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _data_root() -> Path | None:
    env = os.environ.get("SSP_DATA_ROOT")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real-data folder; tests using it skip when it is absent."""
    root = _data_root()
    if root is None:
        pytest.skip("real data not found: set SSP_DATA_ROOT or place it at ../shared/data")
    return root


@pytest.fixture(scope="session")
def tip_cache_root(data_root: Path) -> Path:
    root = data_root / "features" / "clip_vit_b32_tip_cache"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


@pytest.fixture(scope="session")
def voc_root(data_root: Path) -> Path:
    """The 17 real VOC 2012 images with masks (``voc_tiny``)."""
    root = data_root / "voc_tiny"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


@pytest.fixture(scope="session")
def coco_root(data_root: Path) -> Path:
    root = data_root / "coco_tiny"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Small tensors: intra-op threads only add contention (and oversubscribe shared CI runners)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_internet_for_downloads(monkeypatch):
    """``ssp-data`` downloads in tests go to 127.0.0.1 only: a test that forgets its local server's
    mirror gets a refused connection on a loopback port, never a request to a real host."""
    monkeypatch.setenv("SSP_DATA_MIRROR", "http://127.0.0.1:9")

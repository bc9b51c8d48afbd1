"""Read Tip-Adapter cache folders (the feature caches the published Tip-Adapter and APE scripts save).

The published Tip-Adapter and APE scripts save one folder per dataset (``caches/<dataset>/``):

=========================  ===================================================================
``keys_{K}shots.pt``        ``[D, N]`` support features (10 augmented views averaged; columns
                            not necessarily re-normalised)
``values_{K}shots.pt``      ``[N, C]`` one-hot labels (often fp16)
``val_f.pt`` / ``val_l.pt``  ``[M, D]`` validation features / ``[M]`` int64 labels
``test_f.pt`` / ``test_l.pt``  the same for the test split
``text_weights*.pt``        ``[D, C]`` text classifier (APE: ``text_weights_cupl_t.pt``)
=========================  ===================================================================

The files are pickled tensors, often saved from CUDA; they are loaded on the CPU with
``weights_only=True`` (no arbitrary code runs). Features are returned as float32 as stored
(not re-normalised: the classifiers normalise their inputs) in the ``[samples, D]`` layout used
everywhere in ssp; labels as int64. Support samples keep the file's order, which is grouped by
class but in arbitrary class order -- the classifiers never assume otherwise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ssp._checks import check_int
from ssp._utils.arrays import check_labels, check_text_features
from ssp._utils.torch_files import load_torch_file

__all__ = ["TipAdapterCache", "load_tip_adapter_cache", "available_shots"]

_KEYS_PATTERN = re.compile(r"^keys_(\d+)shots\.pt$")


@dataclass
class TipAdapterCache:
    """Features of one dataset at one shot count, read from a Tip-Adapter / APE cache folder.

    Attributes:
        support_features: ``[N, D]`` float32 image features of the support set (the cache keys).
        support_labels: ``[N]`` int64 labels (argmax of the one-hot values), file order.
        val_features, val_labels: ``[M, D]`` float32 / ``[M]`` int64, or None if absent.
        test_features, test_labels: the same for the test split, or None if absent.
        text_features: ``[C, D]`` float32 text classifier, or None if the folder has none.
        folder: the folder read.
        shots: the shot count K of the support files.
        n_classes: C, the width of the one-hot values file.
        text_weights_file: name of the text-classifier file used, or None.
        n_features: D, the feature width.
    """

    support_features: torch.Tensor
    support_labels: torch.Tensor
    val_features: torch.Tensor | None
    val_labels: torch.Tensor | None
    test_features: torch.Tensor | None
    test_labels: torch.Tensor | None
    text_features: torch.Tensor | None
    folder: Path
    shots: int
    n_classes: int
    text_weights_file: str | None = None

    @property
    def n_features(self) -> int:
        """D, the feature width."""
        return int(self.support_features.shape[1])


def available_shots(folder: str | Path) -> list[int]:
    """Shot counts K with a ``keys_{K}shots.pt`` file in ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    shots = []
    for path in folder.iterdir():
        match = _KEYS_PATTERN.match(path.name)
        if match:
            shots.append(int(match.group(1)))
    return sorted(shots)


def _load_tensor(path: Path) -> torch.Tensor:
    obj = load_torch_file(path)
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a tensor saved with "
                         "torch.save")
    return obj


def _check_finite(t: torch.Tensor, path: Path) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{path} contains {bad} NaN or infinite values; re-extract the features")


def _load_features(path: Path, dim: int) -> torch.Tensor:
    t = _load_tensor(path)
    if t.ndim != 2 or t.shape[1] != dim:
        raise ValueError(
            f"{path} has shape {tuple(t.shape)}; expected [samples, D] with D = {dim} (the width "
            "of the keys file). Was it extracted with a different backbone?"
        )
    t = t.to(torch.float32)
    _check_finite(t, path)
    return t


def _load_labels(path: Path, n_samples: int, n_classes: int, features_path: Path) -> torch.Tensor:
    return check_labels(_load_tensor(path), n_samples, n_classes, name=str(path),
                        samples_from=features_path.name, classes_from="the values file")


def _split(folder: Path, name: str, dim: int, n_classes: int):
    features_path, labels_path = folder / f"{name}_f.pt", folder / f"{name}_l.pt"
    has_f, has_l = features_path.is_file(), labels_path.is_file()
    if has_f != has_l:
        present, missing = (features_path, labels_path) if has_f else (labels_path, features_path)
        raise FileNotFoundError(
            f"{present} exists but {missing} does not; the {name} split needs both files")
    if not has_f:
        return None, None
    features = _load_features(features_path, dim)
    labels = _load_labels(labels_path, features.shape[0], n_classes, features_path)
    return features, labels


def _find_text_weights(folder: Path, text_weights: str | None) -> Path | None:
    if text_weights is not None:
        path = folder / text_weights
        if not path.is_file():
            raise FileNotFoundError(f"text classifier {path} not found")
        return path
    candidates = sorted(p for p in folder.glob("text_weights*.pt") if p.is_file())
    if not candidates:
        return None
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ValueError(
            f"{folder} has several text classifiers ({names}); choose one with "
            "text_weights='<file name>'"
        )
    return candidates[0]


def load_tip_adapter_cache(folder: str | Path, shots: int, *,
                       text_weights: str | None = None, read_text: bool = True) -> TipAdapterCache:
    """Read a Tip-Adapter / APE cache folder at ``shots`` shots.

    Args:
        folder: the dataset's cache folder (e.g. ``caches/stanford_cars``).
        shots: K, selecting ``keys_{K}shots.pt`` and ``values_{K}shots.pt``.
        text_weights: file name of the ``[D, C]`` text classifier inside ``folder``; ``None``
            uses the single ``text_weights*.pt`` file if there is one (no file: ``None`` in the
            result; several: an error asking to choose).
        read_text: False leaves the folder's text classifier unread (``text_features`` None), e.g.
            when another file replaces it.

    Returns:
        :class:`TipAdapterCache`; splits whose files are absent are ``None``.

    Raises:
        FileNotFoundError: missing folder or missing keys/values for ``shots`` (the message lists
            the shot counts present).
        ValueError: unreadable files, non-one-hot values, or shapes that do not agree.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"feature-cache folder {folder} does not exist; pass the folder holding "
            "keys_<K>shots.pt, values_<K>shots.pt, val_f.pt, ... for one dataset"
        )
    shots = check_int(shots, "shots")
    keys_path = folder / f"keys_{shots}shots.pt"
    values_path = folder / f"values_{shots}shots.pt"
    for path in (keys_path, values_path):
        if not path.is_file():
            present = available_shots(folder)
            hint = (f"shot counts present: {present}" if present else
                    "the folder has no keys_<K>shots.pt file at all")
            raise FileNotFoundError(f"{path} not found ({hint})")

    keys = _load_tensor(keys_path)
    if keys.ndim != 2:
        raise ValueError(f"{keys_path} has shape {tuple(keys.shape)}; expected [D, N]")
    support = keys.to(torch.float32).T.contiguous()                       # [N, D]
    _check_finite(support, keys_path)
    n_support, dim = support.shape

    values = _load_tensor(values_path)
    if values.ndim != 2 or values.shape[0] != n_support:
        raise ValueError(
            f"{values_path} has shape {tuple(values.shape)} but {keys_path.name} holds "
            f"{n_support} samples (shape {tuple(keys.shape)} = [D, N]); expected [N, C] = "
            f"[{n_support}, C]"
        )
    values = values.to(torch.float32)
    n_classes = int(values.shape[1])
    one_hot = bool(((values == 0) | (values == 1)).all()) and bool((values.sum(1) == 1).all())
    if not one_hot:
        raise ValueError(f"{values_path} is not one-hot (every row must hold a single 1 and "
                         "zeros); it does not look like a Tip-Adapter/APE values file")
    support_labels = values.argmax(dim=1)

    val_features, val_labels = _split(folder, "val", dim, n_classes)
    test_features, test_labels = _split(folder, "test", dim, n_classes)

    text_features = None
    text_path = _find_text_weights(folder, text_weights) if read_text else None
    if text_path is not None:
        text = _load_tensor(text_path)
        if text.ndim != 2 or tuple(text.shape) != (dim, n_classes):
            raise ValueError(
                f"{text_path} has shape {tuple(text.shape)}; expected [D, C] = [{dim}, "
                f"{n_classes}] (D from {keys_path.name}, C from {values_path.name})"
            )
        text_features = check_text_features(text.to(torch.float32), name=str(text_path),
                                            layout="DC").contiguous()

    cache = TipAdapterCache(
        support_features=support,
        support_labels=support_labels,
        val_features=val_features,
        val_labels=val_labels,
        test_features=test_features,
        test_labels=test_labels,
        text_features=text_features,
        folder=folder,
        shots=shots,
        n_classes=n_classes,
        text_weights_file=text_path.name if text_path is not None else None,
    )
    return cache

"""(split from ssp.features_source; see the package docstring)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

_TEXT_SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")


def _read_any(path: Path) -> torch.Tensor:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            obj = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            names = [k for k in ("text_features", "text_weights", "weight") if k in tensors]
            if len(tensors) == 1:
                obj = next(iter(tensors.values()))
            elif names:
                obj = tensors[names[0]]
            else:
                raise ValueError(f"it holds {sorted(tensors)}; save one tensor, or name it 'text_features'")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and len(obj) == 1:
                obj = next(iter(obj.values()))
    except ValueError as err:
        raise ValueError(f"cannot read text features from {path}: {err}") from None
    except Exception as err:  # corrupt / not a tensor file
        raise ValueError(f"cannot read text features from {path}: {type(err).__name__}: {err}") from None
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected one [C, D] or [D, C] tensor")
    return obj


def load_text_features(path: str | Path, n_classes: int, dim: int, layout: str = "auto") -> torch.Tensor:
    """A text classifier file as ``[C, D]`` float32.

    The orientation is read from ``C`` (classes of the cache) and ``D`` (feature width):
    ``layout="auto"`` accepts ``[C, D]`` or ``[D, C]`` and refuses the ambiguous square case
    (``C == D``), which needs ``layout="CD"`` or ``"DC"``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text-features file {path} not found")
    if path.suffix.lower() not in _TEXT_SUFFIXES:
        raise ValueError(f"text-features file {path}: use one of {', '.join(_TEXT_SUFFIXES)}")
    t = _read_any(path)
    if t.ndim != 2 or sorted(t.shape) != sorted((n_classes, dim)):
        raise ValueError(f"text-features file {path} has shape {tuple(t.shape)}; expected [C, D] = "
                         f"[{n_classes}, {dim}] or [D, C] (C from the cache's values file, D from its keys)")
    if layout not in ("auto", "CD", "DC"):
        raise ValueError(f"text layout must be auto, CD or DC, got {layout!r}")
    if layout == "auto":
        if n_classes == dim:
            raise ValueError(f"text-features file {path} is square ({n_classes} x {dim}): C = D, so its "
                             "orientation cannot be told from the shape; pass --text-layout CD or DC")
        layout = "CD" if tuple(t.shape) == (n_classes, dim) else "DC"
    t = (t if layout == "CD" else t.T).to(torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"text-features file {path} contains NaN or infinite values")
    if bool((t.norm(dim=1) == 0).any()):
        raise ValueError(f"text-features file {path} has all-zero class rows; every class needs a text embedding")
    return t

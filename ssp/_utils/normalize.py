"""L2 normalisation, and which side of a matrix holds unit-norm vectors."""
from __future__ import annotations

from ssp._lazy import torch

# a class vector counts as unit-norm within this tolerance (fp16-stored classifiers included)
UNIT_NORM_TOL = 1e-2


def unit_norm_axis(t: torch.Tensor) -> str | None:
    """Which side of a 2-D tensor holds unit-norm vectors: ``"rows"``, ``"columns"``, ``"both"``
    or ``None`` (neither; e.g. raw, unnormalised embeddings)."""
    t = t.detach().to(torch.float64)
    rows = bool(((t.norm(dim=1) - 1).abs() < UNIT_NORM_TOL).all())
    cols = bool(((t.norm(dim=0) - 1).abs() < UNIT_NORM_TOL).all())
    return {(True, True): "both", (True, False): "rows", (False, True): "columns"}.get((rows, cols))


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Unit L2 norm along ``dim`` (zero vectors stay zero)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)

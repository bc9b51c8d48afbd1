"""Devices: ``None`` / ``"auto"`` / ``"cuda:1"`` / ``"cpu"`` -> a :class:`torch.device`."""
from __future__ import annotations

from ssp._lazy import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> first CUDA device if available, else CPU; anything else as given."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(device)!r} is not a device name torch knows; use auto, cpu, cuda, "
                         "cuda:N (a GPU index) or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but CUDA is not available on this machine; "
            "pass device='cpu' or device='auto'."
        )
    return device

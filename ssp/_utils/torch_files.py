"""Reading files written by ``torch.save``: tensors only (``weights_only``), one-line errors naming
the file."""
from __future__ import annotations

import os
import warnings
from typing import Any

from ssp._lazy import torch


def is_torch_file(path: str | os.PathLike) -> bool:
    """True when ``path`` starts like a file written by ``torch.save`` (a zip archive, or the
    legacy pickle format); read from the first bytes only."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            return True
        with open(path, "rb") as f:
            return f.read(1) == b"\x80"  # pickle protocol >= 2
    except OSError:
        return False


def load_torch_file(path: str | os.PathLike, *, what: str = "tensor file") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors naming
    the file: a corrupt or foreign file says so (not torch's advice to disable
    ``weights_only``, wrong for a damaged file), a pickle holding other Python objects names
    the object."""
    import pickle
    import re

    if not is_torch_file(path):
        raise ValueError(f"{path} is not a {what}: corrupt or not saved by torch.save")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol note says nothing about the file
            warnings.filterwarnings("ignore", message=".*pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise ValueError(f"{path} holds a Python object ({found.group(1)}), not only tensors; save "
                             "plain tensors (or dicts / lists of tensors) with torch.save") from None
        raise ValueError(f"{path} is not a {what}: corrupt or not saved by torch.save") from None
    except (RuntimeError, EOFError, KeyError, ValueError, AttributeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a {what}: corrupt, truncated or not saved by torch.save "
                         f"({type(err).__name__}: {first})") from None

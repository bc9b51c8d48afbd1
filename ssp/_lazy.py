"""Modules imported on first use, so that reading the method registry (``ssp-fewshot --help``,
``ssp.methods.method_names()``) does not pay for importing torch.

``from ssp._lazy import torch`` gives a stand-in module whose first attribute access imports
torch; every access after that is one attribute lookup on the real module.
"""
from __future__ import annotations

import importlib
import types
from typing import Any

__all__ = ["torch", "no_grad"]


class _LazyModule(types.ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_module"] = None

    def _load(self) -> types.ModuleType:
        module = importlib.import_module(self.__name__)
        self.__dict__["_module"] = module
        return module

    def __getattr__(self, attr: str) -> Any:  # only called for names not in __dict__
        module = self.__dict__["_module"] or self._load()
        return getattr(module, attr)

    def __dir__(self) -> list[str]:
        return dir(self.__dict__["_module"] or self._load())

    def __repr__(self) -> str:
        state = "imported" if self.__dict__["_module"] is not None else "not imported yet"
        return f"<lazy module {self.__name__!r} ({state})>"


torch: Any = _LazyModule("torch")


def no_grad(fn):
    """``@torch.no_grad()`` without importing torch at definition time."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper

"""The method stage's shape: small modules, and no private name imported from another module."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

METHODS = Path(__file__).resolve().parents[2] / "ssp" / "methods"
MODULES = sorted(METHODS.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(METHODS)))
def test_module_is_at_most_600_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= 600, f"{path.name} has {n} lines; split it by concept"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(METHODS)))
def test_no_private_name_imported_from_another_module(path):
    """``from x import _name`` and ``import x._y`` of an ssp module (any depth, functions included)."""
    borrowed = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ssp"):
            borrowed += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            borrowed += [a.name for a in node.names if a.name.startswith("ssp")
                         and any(part.startswith("_") and part not in ("_checks", "_utils", "_lazy", "_io")
                                 for part in a.name.split("."))]
    assert not borrowed, f"{path.name} imports private names {borrowed}"

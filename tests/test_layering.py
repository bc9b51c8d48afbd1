"""The package tree's one-way data flow, checked on the source: a package imports only packages
of a lower layer (or its own), and no module imports itself back through others."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SSP = Path(__file__).resolve().parents[1] / "ssp"

#: Lower number = lower layer. A module may import its own package and any package of a lower layer.
LAYERS = {
    "ssp._checks": 0, "ssp._io": 0, "ssp._lazy": 0,     # utilities
    "ssp._utils": 1,
    "ssp.distributed": 2,
    "ssp.data": 3,
    "ssp.backbone": 4,
    "ssp.features": 5, "ssp.methods": 5,
    "ssp.metrics": 6,                                    # logits -> numbers
    "ssp.report": 7, "ssp.unmix": 7,
    "ssp.run": 8,
    "ssp.cli": 9,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SSP.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str | None:
    """The layered unit (package or utility module) that ``module`` belongs to."""
    for unit in sorted(LAYERS, key=len, reverse=True):
        if module == unit or module.startswith(unit + "."):
            return unit
    return None


def _imports(path: Path) -> set[str]:
    """Absolute names of the ``ssp`` modules ``path`` imports (at any depth of the file)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "ssp")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "ssp":
                continue
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)  # `from ssp.methods import registry`
    return out


MODULES = {_module_name(p): p for p in SSP.rglob("*.py")}


def test_every_module_belongs_to_a_layer():
    assert sorted(m for m in MODULES if m != "ssp" and _unit(m) is None) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "ssp"))
def test_imports_flow_one_way(module):
    unit = _unit(module)
    bad = []
    for name in sorted(_imports(MODULES[module])):
        target = _unit(name)
        if name == "ssp" or target is None or target == unit:
            continue  # `from ssp import __version__`; names inside modules; the unit itself
        if LAYERS[target] >= LAYERS[unit]:
            bad.append(f"{name} (layer {LAYERS[target]} {target})")
    assert not bad, f"{module} (layer {LAYERS[unit]} {unit}) imports upwards or sideways: {bad}"


def test_no_import_cycles_between_modules():
    graph = {m: {n for n in _imports(p) if n in MODULES and n != m and n != "ssp"} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == [], cycles

"""The package tree's one-way data flow, checked on the source: a package imports only packages
of a lower layer (or its own), wherever the import sits (module top, inside a function,
``importlib.import_module("ssp....")`` or ``__import__`` by string); no module imports itself back
through others; no module borrows another module's private name; no module grows past 600 lines."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SSP = Path(__file__).resolve().parents[1] / "ssp"

#: Lower number = lower layer. A module may import its own package and any package of a lower layer:
#: data -> backbone -> features -> methods (unmix beside them) -> metrics -> run -> report -> cli.
LAYERS = {
    "ssp._checks": 0, "ssp._io": 0, "ssp._lazy": 0,     # utilities
    "ssp._utils": 1,
    "ssp.distributed": 2,
    "ssp.data": 3,
    "ssp.backbone": 4,
    "ssp.features": 5,
    "ssp.methods": 6, "ssp.unmix": 6,
    "ssp.metrics": 7,
    "ssp.run": 8,
    "ssp.report": 9,
    "ssp.cli": 10,
}

MAX_LINES = 600
_MODULE_NAME = re.compile(r"ssp(\.\w+)+")


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


def _package(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def _from_target(node: ast.ImportFrom, package: str) -> str:
    """The absolute module name of ``from X import ...`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _is_dynamic_import(node: ast.Call) -> bool:
    """``importlib.import_module(...)``, ``import_module(...)`` or ``__import__(...)``."""
    f = node.func
    return (isinstance(f, ast.Name) and f.id in ("__import__", "import_module")) or \
        (isinstance(f, ast.Attribute) and f.attr == "import_module")


def imports_of(source: str, module: str, *, is_package: bool = False, dynamic: bool = True) -> set[str]:
    """Absolute names of the ``ssp`` modules ``source`` (the text of ``module``) imports, at any
    depth of the file: import statements, and (``dynamic``) modules imported by string. A dynamic
    import of a computed name counts every ``"ssp.…"`` string of the file as imported."""
    package = _package(module, is_package)
    tree = ast.parse(source)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "ssp")
        elif isinstance(node, ast.ImportFrom):
            name = _from_target(node, package)
            if name.split(".")[0] != "ssp":
                continue
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)  # `from ssp.methods import registry`
        elif dynamic and isinstance(node, ast.Call) and _is_dynamic_import(node) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                if arg.value.split(".")[0] == "ssp":
                    out.add(arg.value)
            else:  # a name computed at run time: any module name the file spells may be it
                out.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                           and isinstance(n.value, str) and _MODULE_NAME.fullmatch(n.value))
    return out


def private_imports_of(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """``from ssp.x import _name`` statements of ``source``: private (leading underscore, not dunder)
    names taken from another ssp module."""
    package = _package(module, is_package)
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            name = _from_target(node, package)
            if name.split(".")[0] != "ssp":
                continue
            bad += [f"{name}.{a.name} (line {node.lineno})" for a in node.names
                    if a.name.startswith("_") and not (a.name.startswith("__") and a.name.endswith("__"))]
    return bad


MODULES = {_module_name(p): p for p in SSP.rglob("*.py")}


def _imports(module: str, dynamic: bool = True) -> set[str]:
    path = MODULES[module]
    return imports_of(path.read_text(), module, is_package=path.name == "__init__.py", dynamic=dynamic)


def upward_imports(module: str, imported: set[str]) -> list[str]:
    unit = _unit(module)
    bad = []
    for name in sorted(imported):
        target = _unit(name)
        if name == "ssp" or target is None or target == unit:
            continue  # `from ssp import __version__`; names inside modules; the unit itself
        if LAYERS[target] >= LAYERS[unit]:
            bad.append(f"{name} (layer {LAYERS[target]} {target})")
    return bad


def test_every_module_belongs_to_a_layer():
    assert sorted(m for m in MODULES if m != "ssp" and _unit(m) is None) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "ssp"))
def test_imports_flow_one_way(module):
    bad = upward_imports(module, _imports(module))
    assert not bad, f"{module} (layer {LAYERS[_unit(module)]} {_unit(module)}) imports upwards or sideways: {bad}"


def test_the_check_sees_imports_in_functions_and_by_string():
    """The rule's reach: a run module calling the report stage from inside a function, by
    ``importlib`` with a literal or a computed name, or by ``__import__``, is caught."""
    cases = {
        "def f():\n    from ssp.report.tables import write_report\n": "ssp.report.tables",
        "def f():\n    import ssp.cli.fewshot\n": "ssp.cli.fewshot",
        "import importlib\ndef f():\n    return importlib.import_module('ssp.report.tables')\n": "ssp.report.tables",
        "from importlib import import_module\nX = import_module('ssp.cli')\n": "ssp.cli",
        "def f():\n    return __import__('ssp.report.comparison')\n": "ssp.report.comparison",
        "import importlib\n_L = {'a': 'ssp.report.tables'}\ndef f(n):\n    return importlib.import_module(_L[n])\n":
            "ssp.report.tables",
        "def f():\n    from ..report import tables\n": "ssp.report.tables",
    }
    for source, target in cases.items():
        found = imports_of(source, "ssp.run.example")
        assert target in found, (source, found)
        assert upward_imports("ssp.run.example", found), source
    # imports down the flow, and strings that are not imported, pass
    fine = "from ssp.methods.registry import parse_method\nDOC = 'see ssp.report.tables'\n"
    assert upward_imports("ssp.run.example", imports_of(fine, "ssp.run.example")) == []


def test_no_import_cycles_between_modules():
    # import statements only: a registry importing its package by name to load the built-in
    # entries on first use (ssp.methods.registry) is not a cycle of the module graph
    graph = {m: {n for n in _imports(m, dynamic=False) if n in MODULES and n != m and n != "ssp"} for m in MODULES}
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


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_is_borrowed_across_modules(module):
    path = MODULES[module]
    bad = private_imports_of(path.read_text(), module, is_package=path.name == "__init__.py")
    assert not bad, f"{module} imports private names of other modules: {bad}; give what is shared a public name"


def test_the_private_name_check_sees_relative_and_absolute_imports():
    source = ("from ssp.methods.base import _CLIPFeatureClassifier, __version__\n"
              "def f():\n    from .tables import _mean_std, write_report\n")
    assert private_imports_of(source, "ssp.report.comparison") == [
        "ssp.methods.base._CLIPFeatureClassifier (line 1)", "ssp.report.tables._mean_std (line 3)"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_600_lines(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[module]} has {n} lines (at most {MAX_LINES}): split it by concept"

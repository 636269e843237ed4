"""The tree is the map: each sub-package sits on a floor, and no import goes up a floor or makes a circle.

ptycho_torch, bottom to top:
    0  errors, logging_setup, torch_threads    plain Python: what everything may use
    1  safe_output                              atomic writes, output directories, run claims and locks
    2  config                                   the run configuration
    3  physics                                  pure tensor math (forward model, stitching)
    4  data                                     scans in
    5  model                                    the network, its LightningModule, bundle, checkpoints
    6  evaluation                               metrics, data fit, plots, the truth's loss
    7  training, reconstruction                 the two workflows (neither imports the other)
    8  demo, live                               simulate -> train -> reconstruct; reconstruction while acquired
    9  api                                      the Python front door: resolves configs, checks inputs
    10 cli                                      argparse and printing only
ptycho_dist (over any floor of ptycho_torch below its cli):
    0  config      1  cluster      2  training      3  inference, sweeps, live      4  demo      5  api
    6  cli         (the cli may use ptycho_torch's cli: run_cli, the run flags)

Every import counts, also those inside functions (a lazy import still couples two floors), and no
circle is allowed at either grain: between sub-packages, or between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FLOORS = {
    "ptycho_torch": {
        "__init__": 0, "errors": 0, "logging_setup": 0, "torch_threads": 0,
        "safe_output": 1, "config": 2, "physics": 3, "data": 4, "model": 5, "evaluation": 6,
        "training": 7, "reconstruction": 7, "demo": 8, "live": 8, "api": 9, "cli": 10,
    },
    "ptycho_dist": {
        "__init__": 0, "config": 0, "cluster": 1, "training": 2, "inference": 3, "sweeps": 3, "live": 3, "demo": 4,
        "api": 5, "cli": 6,
    },
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in FLOORS for p in sorted((REPO / package).rglob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, at import time?, line) for every import of our packages in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue  # for type checkers only
            if isinstance(child, ast.Import):
                found.extend((a.name, inner, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:  # `from pkg import sub` imports the sub-module
                    found.append((f"{base}.{alias.name}", inner, child.lineno))
            visit(child, inner)

    visit(tree, True)
    return [(m, top, line) for m, top, line in found if m.split(".")[0] in FLOORS]


def _resolve(imported: str, modules: dict[str, Path]) -> str:
    """The longest prefix of `imported` that is one of our modules (`pkg.mod.func` -> `pkg.mod`)."""
    parts = imported.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return imported


def _area(module: str) -> tuple[str, str]:
    """(package, sub-package or top module) of a module name."""
    parts = module.split(".")
    return parts[0], parts[1] if len(parts) > 1 else "__init__"


def _floor(module: str) -> int:
    package, area = _area(module)
    if area not in FLOORS[package]:
        pytest.fail(f"{module}: {package}/{area} has no floor in tests/test_layers.py; give it one (and a row in "
                    "docs/architecture.md)")
    return FLOORS[package][area]


def _edges() -> list[tuple[str, str, bool, int]]:
    modules = _modules()
    edges = []
    for name, path in modules.items():
        for imported, top, line in _imports(name, path):
            target = _resolve(imported, modules)
            if target != name:
                edges.append((name, target, top, line))
    return edges


def test_every_module_has_a_floor():
    for name in _modules():
        _floor(name)


def test_no_import_goes_up_a_floor():
    wrong = []
    for source, target, _, line in _edges():
        (sp, sa), (tp, ta) = _area(source), _area(target)
        if sp == "ptycho_torch" and tp == "ptycho_dist":
            wrong.append(f"{source}:{line} imports {target} (ptycho_torch never imports ptycho_dist)")
        elif sp == "ptycho_dist" and tp == "ptycho_torch":
            if ta == "cli" and sa != "cli":
                wrong.append(f"{source}:{line} imports {target} (only ptycho_dist's cli uses ptycho_torch's cli)")
        elif sa != ta and _floor(target) >= _floor(source):
            wrong.append(f"{source}:{line} imports {target} (floor {_floor(source)} -> {_floor(target)})")
    assert not wrong, "imports against the floors:\n" + "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def test_no_circle_between_sub_packages():
    graph: dict[str, set[str]] = {}
    for source, target, _, _ in _edges():
        a, b = ".".join(_area(source)), ".".join(_area(target))
        if a != b and not a.endswith("__init__"):
            graph.setdefault(a, set()).add(b)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_circle_between_modules():
    graph: dict[str, set[str]] = {}
    for source, target, _, _ in _edges():
        graph.setdefault(source, set()).add(target)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_checks_see_an_upward_import(tmp_path):
    """The parser finds function-local and relative imports (else the floors would hold vacuously)."""
    path = tmp_path / "probe.py"
    path.write_text("from . import errors\n\ndef f():\n    from ptycho_torch.cli.main import main\n")
    found = _imports("ptycho_torch.physics.forward.probe", path)
    assert ("ptycho_torch.physics.forward.errors", True, 1) in found
    assert ("ptycho_torch.cli.main.main", False, 4) in found

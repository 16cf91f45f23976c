"""The house's layout, as ARCHITECTURE.md draws it: packages in layers, no import cycle of
any kind, no module over 300 lines.

Every import counts: at module level, inside functions, and under ``if TYPE_CHECKING:``;
and importing ``a.b.c`` first runs ``a/__init__.py`` and ``a/b/__init__.py``, so those are
edges too (``trust`` -> ``config.records`` ran ``config/__init__``, which imported
``config.load``, which imported ``trust``: a real cycle that a module-only graph missed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import proxy

# The layers, lowest first: a module may import its own layer and those below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "proxy.__init__",
        "proxy.aiohttp_compat",
        "proxy.derived_keys",
        "proxy.errors",
        "proxy.exit_status",
        "proxy.gateway",
        "proxy.paths",
    ),
    ("proxy.responses", "proxy.config", "proxy.simulator"),
    ("proxy.observe",),
    ("proxy.admission", "proxy.tokens"),
    ("proxy.upstream",),
    ("proxy.sharing",),
    ("proxy.server",),
    ("proxy.cli", "proxy.__main__"),
)
MAX_LINES = 300


def _modules(root: Path) -> dict[str, ast.Module]:
    """Every module under ``root`` by dotted name; a package's ``__init__`` as ``pkg.__init__``."""
    modules = {}
    for file in root.rglob("*.py"):
        parts = file.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts)] = ast.parse(file.read_text(encoding="utf-8"), str(file))
    return modules


def _node(name: str, modules: dict[str, ast.Module]) -> str | None:
    """The module that importing ``name`` runs: a package's ``__init__``, or the module."""
    if f"{name}.__init__" in modules:
        return f"{name}.__init__"
    return name if name in modules else None


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules importing it runs, every import and package ``__init__`` counted."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        package = name.split(".")[:-1]  # the package this module is in
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                targets.add(module)
                for alias in node.names:  # ``from . import values`` imports a submodule
                    if _node(f"{module}.{alias.name}", modules) is not None:
                        targets.add(f"{module}.{alias.name}")
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        edges: set[str] = set()
        for target in targets:
            parts = target.split(".")
            # Importing a.b.c runs a/__init__, a/b/__init__, then a/b/c; the importer's own
            # packages are running already.
            for depth in range(1, len(parts) + 1):
                prefix = parts[:depth]
                if prefix == package[:depth]:
                    continue
                found = _node(".".join(prefix), modules)
                if found is not None and found != name:
                    edges.add(found)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)) is not None:
            return cycle
    return None


def _layer(module: str) -> int:
    for rank, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md")


PROXY = Path(proxy.__file__).parent


def test_the_graph_is_read_right() -> None:
    """Known edges are there (an empty graph would pass every check below)."""
    graph = import_graph(PROXY)
    assert len(graph) > 40
    assert {"proxy.config.__init__", "proxy.admission.guard"} <= graph["proxy.server.app"]
    assert "proxy.config.values" in graph["proxy.config.profiles"]
    # A package __init__ runs when a submodule is imported from outside the package.
    assert "proxy.config.__init__" in graph["proxy.upstream.egress"]


def test_a_cycle_through_a_package_init_is_found(tmp_path: Path) -> None:
    """The shape of the cycle the old test missed, rebuilt: b.x imports a.records; importing
    it runs a/__init__, which imports a.load, which imports b.x."""
    root = tmp_path / "pkg"
    for folder in (root, root / "a", root / "b"):
        folder.mkdir()
        (folder / "__init__.py").write_text("")
    (root / "a" / "__init__.py").write_text("from .load import load\n")
    (root / "a" / "load.py").write_text("from ..b.x import f\n")
    (root / "a" / "records.py").write_text("R = 1\n")
    (root / "b" / "x.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a.records import R\n"
    )
    cycle = find_cycle(import_graph(root))
    assert cycle is not None and "pkg.a.__init__" in cycle and "pkg.b.x" in cycle


def test_no_import_cycle_of_any_kind() -> None:
    cycle = find_cycle(import_graph(PROXY))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph(PROXY).items()
        for target in targets
        if _layer(target) > _layer(module)
    )
    assert upward == []


def test_no_module_over_300_lines() -> None:
    long = {
        str(file.relative_to(PROXY)): n
        for file in PROXY.rglob("*.py")
        if (n := len(file.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}

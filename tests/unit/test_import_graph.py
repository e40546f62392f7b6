"""The product's import graph: no loop anywhere, and imports only downward.

Built from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` counts, also those inside functions and under
``TYPE_CHECKING`` — a loop that only a lazy import keeps from failing at start-up
is still a loop in the design.

Layers (docs/DESIGN.md, Layout): hacluster/ stands on raft/, replication/, vip/,
checkers/, which import nothing above them and nothing of each other, except the
one durable-write helper ``replication.durable_file`` (see its docstring). Inside
hacluster/ the rooms stand on each other in this order, lowest first: http/ (the
HTTP endpoints: pure rendering and decisions fed a snapshot, and their server),
node/, modules/, mirror/ and farm/ (side by side, never importing each other),
node_daemon.py, cli.py, __main__.py.

``python -m tests.unit.test_import_graph [ROOT]`` prints the graph of hacluster/ and its
loops as markdown (docs/import-graph.md holds it before and after the rooms).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from tests.conftest import REPO

PRODUCT = ("hacluster", "raft", "replication", "vip", "checkers")
LOWER = ("raft", "replication", "vip", "checkers")
# What a lower package may import from another lower package (module names).
SHARED_LOW_LEVEL = frozenset({"replication.durable_file"})
# hacluster's rooms, lowest first; a room imports only rooms below it.
ROOM_FLOORS = {"hacluster.http": 0, "hacluster.node": 1, "hacluster.modules": 2,
               "hacluster.mirror": 3, "hacluster.farm": 3, "hacluster.node_daemon": 4,
               "hacluster.cli": 5, "hacluster.__main__": 6}


def module_files(root: Path, packages: tuple[str, ...] = PRODUCT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Dotted names this module imports (``from a import b`` gives ``a.b``: the
    submodule when there is one, else the caller resolves it to ``a``)."""
    names = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(root: Path = REPO, packages: tuple[str, ...] = PRODUCT) -> dict[str, set[str]]:
    """Module -> the product modules it imports."""
    files = module_files(root, packages)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            # the longest prefix that is a module of ours: a.b.name -> a.b
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops: strongly connected components of more than one module
    (or a module importing itself), each sorted, in sorted order (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _room(module: str) -> str | None:
    for room in ROOM_FLOORS:
        if module == room or module.startswith(room + "."):
            return room
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up or sideways against the layout, one line each."""
    bad = []
    for module, targets in sorted(graph.items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            target_top = target.split(".")[0]
            if top in LOWER and target_top != top and target not in SHARED_LOW_LEVEL:
                bad.append(f"{module} imports {target}: {top}/ imports nothing of the other packages")
            room, target_room = _room(module), _room(target)
            if top == "hacluster" and target_top == "hacluster" and room != target_room:
                if room is None or target_room is None:
                    # The package itself (its docstring and __version__) stands below every
                    # room: it imports nothing, and any room may read its version.
                    if module != "hacluster" and not (target == "hacluster" and not graph[target]):
                        bad.append(f"{module} imports {target}: outside the rooms")
                elif ROOM_FLOORS[target_room] >= ROOM_FLOORS[room]:
                    bad.append(f"{module} imports {target}: {target_room} is not below {room}")
    return bad


def test_no_import_loop_in_the_product() -> None:
    loops = cycles(import_graph())
    assert loops == [], "import loops: " + "; ".join(" <-> ".join(c) for c in loops)


def test_imports_only_go_down() -> None:
    assert layer_violations(import_graph()) == []


def test_the_graph_sees_a_loop_through_a_lazy_import(tmp_path: Path) -> None:
    # The check itself: a loop closed only by an import inside a function (the
    # daemon's registry loop was one) and one under TYPE_CHECKING are both found.
    pkg = tmp_path / "hacluster"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from hacluster.a import f\n")
    (pkg / "c.py").write_text("from . import a\n")
    graph = import_graph(tmp_path, ("hacluster",))
    assert graph["hacluster.c"] == {"hacluster.a"}
    assert cycles(graph) == [["hacluster.a", "hacluster.b"]]


def test_a_lower_package_importing_hacluster_is_refused() -> None:
    graph = {"vip.address": {"hacluster.node.control"}, "raft.member": {"replication.durable_file"},
             "hacluster.node.daemon": {"hacluster.modules.registry"}}
    assert layer_violations(graph) == [
        "hacluster.node.daemon imports hacluster.modules.registry: hacluster.modules is not "
        "below hacluster.node",
        "vip.address imports hacluster.node.control: vip/ imports nothing of the other packages"]


def markdown(root: Path, title: str) -> str:
    """hacluster/'s graph (module -> the hacluster modules it imports) and its loops."""
    graph = import_graph(root, PRODUCT)
    lines = [f"### {title}", "", "```"]
    for module in sorted(m for m in graph if m.split(".")[0] == "hacluster"):
        inside = sorted(t for t in graph[module] if t.split(".")[0] == "hacluster")
        lines.append(f"{module} -> {', '.join(inside) or '-'}")
    lines += ["```", "", "Loops:", ""]
    loops = cycles(graph)
    lines += [f"- {' <-> '.join(c)}" for c in loops] or ["- none"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    print(markdown(target, sys.argv[2] if len(sys.argv) > 2 else str(target)))

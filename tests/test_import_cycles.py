"""Imports flow downward only: the edgekit import graph, lazy imports included, has no cycle.

The graph is read from the source (no module is imported): every `import` and `from ...
import` anywhere in a module (inside functions too) is an edge to the edgekit module it
names. `import edgekit.x` and `from .x import name` of a package count as importing that
package's __init__; `from . import x` (and `from .pkg import x`) where x is a submodule
counts as importing the submodule. Imports under `if TYPE_CHECKING:` never run and are
left out. A cycle is a strongly connected component of more than one module, or a module
that imports itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "edgekit"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE


def modules() -> dict[str, Path]:
    """Dotted module name -> its file (a package is its __init__.py)."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import statement in ``tree``, at any depth, except those under `if TYPE_CHECKING:`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children = [*node.orelse, node.test]
        todo.extend(children)


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {edgekit module it imports: line of the first such import}."""
    known = modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    # the deepest edgekit module the dotted name reaches
                    targets += [next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in known), None)]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + (node.module.split(".") if node.module else []))
                else:
                    base = node.module or ""
                subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
                targets += subs
                if len(subs) < len(node.names):  # a name defined in base itself
                    targets.append(base if base in known else None)
            for target in targets:
                if target is not None:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(sorted(component))
    return found


def _one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node]):
            if child == start:
                return paths[node] + [start]
            if child in members and child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    return component


def cycles(graph: dict[str, dict[str, int]]) -> list[str]:
    """One line per cycle: its modules, and one path around it with the importing lines."""
    known = modules()
    lines = []
    for component in strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        path = _one_cycle(graph, component)
        steps = " -> ".join(
            f"{a} ({known[a].relative_to(PACKAGE_DIR.parent)}:{graph[a][b]})" for a, b in zip(path, path[1:])
        )
        lines.append(f"{{{', '.join(component)}}}: {steps} -> {path[-1]}")
    return lines


def test_the_graph_is_read_from_every_module():
    graph = import_graph()
    assert "edgekit.core" in graph and "edgekit.cli" in graph
    assert "edgekit.core" in graph["edgekit.cli"]
    assert all(target.startswith(PACKAGE) for edges in graph.values() for target in edges)


def test_the_reader_sees_lazy_relative_and_submodule_imports(tmp_path, monkeypatch):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..high import Y\n    return Y\n")
    (pkg / "high.py").write_text(
        "from typing import TYPE_CHECKING\nimport edgekit.low\nfrom .sub.leaf import f\nif TYPE_CHECKING:\n    from .sub import leaf\nY = 2\n"
    )
    (pkg / "selfish.py").write_text("def g():\n    from . import selfish\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE_DIR", pkg)
    graph = import_graph()
    assert graph["edgekit.sub"] == {"edgekit.sub.leaf": 1}
    assert graph["edgekit.sub.leaf"] == {"edgekit.high": 2}
    assert graph["edgekit.high"] == {"edgekit.low": 2, "edgekit.sub.leaf": 3}
    found = cycles(graph)
    assert len(found) == 2
    assert any(line.startswith("{edgekit.high, edgekit.sub.leaf}") for line in found)
    assert any(line.startswith("{edgekit.selfish}") for line in found)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, f"{len(found)} import cycle(s) in edgekit (imports must flow downward only):\n" + "\n".join(found)

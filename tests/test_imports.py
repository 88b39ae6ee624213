"""The package's shape (issue 24): no import circle between avatar_cli's modules, and no module over 450 lines.

The import graph is read from the source with ``ast`` (nothing is imported): an edge A -> B for every
module-level ``import``/``from ... import`` in A that names avatar_cli module B (relative imports resolved;
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``). Imports inside a
function or class body run only when called and are not edges; nor are those under ``if TYPE_CHECKING:``
(annotations only, never run). Importing a submodule runs its package's ``__init__`` first, so an edge to
``a.b.c`` is also an edge to ``a.b`` and ``a``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import avatar_cli

ROOT = Path(avatar_cli.__file__).resolve().parent
MAX_LINES = 450


def modules() -> dict[str, Path]:
    """avatar_cli's modules: dotted name -> file (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]):
    """The import statements run when the module is imported: its top level, and inside ``if``/``try``/``with``
    blocks there (not ``if TYPE_CHECKING:``), never in a def or class."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _type_checking(node.test):
                yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level_imports(block)
        elif isinstance(node, ast.With):
            yield from _module_level_imports(node.body)


def import_graph() -> dict[str, set[str]]:
    """module -> the avatar_cli modules its import runs (see the module docstring)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _module_level_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                child = f"{origin}.{alias.name}"
                targets.add(child if child in mods else origin)
        edges = set()
        for target in targets:
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & mods.keys()
        edges.discard(name)
        # a package's own __init__ runs before its submodules: a submodule importing its package is no circle
        graph[name] = {t for t in edges if not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_finds_a_circle_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_package_and_type_checking_imports():
    graph = import_graph()
    # pipelines/ditto.py: "from .ditto_stream import ..." (relative), "from ..models.ditto import DittoModels"
    assert {"avatar_cli.pipelines.ditto_stream", "avatar_cli.models.ditto", "avatar_cli.models"} <= \
        graph["avatar_cli.pipelines.ditto"]
    # ditto_stream.py imports .ditto only under TYPE_CHECKING (an annotation): no edge back
    assert "avatar_cli.pipelines.ditto" not in graph["avatar_cli.pipelines.ditto_stream"]
    assert "avatar_cli.pipelines" not in graph["avatar_cli.pipelines.ditto"]  # its own package: not an edge


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle) + " (move the shared piece into a module both import)"


def test_no_module_over_450_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    over = sorted(((n, s) for n, s in sizes.items() if s > MAX_LINES), key=lambda item: -item[1])
    assert not over, f"modules over {MAX_LINES} lines (split them along their seams): " + \
        ", ".join(f"{n} {s}" for n, s in over)

"""The layers point one way: the cutting core (`pipeline/prune/`) imports nothing above it, and no
module of edgeprune imports one that imports it back (no cycle, hidden imports included).

The learned methods (`pipeline/learned/`) train with the recovery's trainer and price with the
search's cost model before the core scores and cuts; the core itself never reaches up to them, to
the trainer, the search or the loading of user models (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "edgeprune" / "pipeline" / "prune"
ABOVE = (
    "edgeprune.pipeline.recovery",
    "edgeprune.pipeline.search",
    "edgeprune.pipeline.loading",
    "edgeprune.pipeline.learned",
    "edgeprune.pipeline.methods",  # every method registered, the learned ones included
    "edgeprune.pipeline.compress",
)


def _imported(source: str, package: str) -> set[str]:
    """Every module `source` (a file of `package`) imports, at the top or inside a function, as
    dotted names (for `from PKG import NAME` both PKG and PKG.NAME, since NAME may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's package
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _upward(source: str, package: str) -> list[str]:
    return sorted(n for n in _imported(source, package) if any(n == a or n.startswith(a + ".") for a in ABOVE))


def _package(path: Path) -> str:
    return ".".join(path.relative_to(CORE.parents[2]).parent.parts)


def test_the_cutting_core_imports_nothing_above_it() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 10  # the core is where this test thinks it is
    upward = {str(f.relative_to(CORE)): names for f in files if (names := _upward(f.read_text(), _package(f)))}
    assert upward == {}, f"pipeline/prune/ imports from the layers above it: {upward}"


def test_the_check_sees_every_way_of_writing_an_upward_import() -> None:
    package = _package(CORE / "methods" / "l1.py")
    assert package == "edgeprune.pipeline.prune.methods"
    for source in (
        "from edgeprune.pipeline.recovery.trainer import train",
        "import edgeprune.pipeline.search.cost_model",
        "from edgeprune.pipeline import loading",
        "from ...learned import gating",
        "def f():\n    from edgeprune.pipeline.methods import get_method",
    ):
        assert _upward(source, package), source
    assert not _upward("from edgeprune.pipeline.prune.space import PruningSpace\nfrom .base import register", package)


def test_every_method_is_registered_above_the_core() -> None:
    from edgeprune.pipeline.methods import method_names

    assert {"l1", "thinet", "lasso", "slimming", "pfs", "tas", "flop", "anp", "sanp"} <= set(method_names())


PACKAGE = CORE.parents[1]  # edgeprune/


def _module_graph() -> dict[str, set[str]]:
    """edgeprune's modules and the edgeprune modules each imports (at the top, inside a function or
    under TYPE_CHECKING alike: a hidden import is still a dependency), `from PKG import NAME`
    resolved to the module NAME where it is one, else to PKG."""
    modules = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = f
    graph: dict[str, set[str]] = {}
    for name, f in modules.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        imported = _imported(f.read_text(), package)
        targets = set()
        for target in imported:
            if any(other.startswith(target + ".") and other in modules for other in imported):
                continue  # `from PKG import MODULE`: the module, not PKG's __init__
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` (its modules in order), or [] when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        path.append(node)
        for nxt in sorted(graph[node]):
            found = visit(nxt)
            if found:
                return found
        path.pop()
        done.add(node)
        return []

    for start in sorted(graph):
        found = visit(start)
        if found:
            return found
    return []


def test_edgeprune_has_no_import_cycle() -> None:
    graph = _module_graph()
    assert len(graph) > 100 and "edgeprune.pipeline.loaded" in graph["edgeprune.ecosystems.base"]
    cycle = _cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_hidden_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


#: the most lines a module of edgeprune may hold: past it, a file holds more than one concern
MAX_LINES = 500


def test_no_module_is_over_the_line_limit() -> None:
    long = {
        str(f.relative_to(PACKAGE)): n
        for f in PACKAGE.rglob("*.py")
        if (n := len(f.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these modules (over {MAX_LINES} lines): {long}"

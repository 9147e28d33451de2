"""The package's imports run one way: no cycles, and no module imports a layer above its own.

Every ``import`` of a densekit module counts, wherever it stands (module level, inside a
function, under ``TYPE_CHECKING``): a lazy or type-only import is still an arrow a reader
follows. The layers, top first, are those of ``docs/architecture.md``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "densekit"

# top first; a module may import its own layer and the layers below it
LAYERS: list[tuple[str, ...]] = [
    ("cli",),
    ("commands",),
    ("inference", "benchmark", "pretrain"),
    ("tasks", "medical"),
    ("models", "features"),
    ("heads", "backbones"),
    ("data",),
    ("errors", "io", "version", "schedules", "pictures", "progress", "tables"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The densekit modules ``name`` imports (``from a import b`` counts ``a.b`` when it is a
    module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names]
            targets = [t if t in known else module for t in targets]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer(module: str) -> str:
    """``densekit.inference.tiles`` -> ``inference``; the package itself is the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cli"


def test_every_part_of_the_package_has_a_layer():
    parts = {layer(m) for m in modules() if m != "densekit"}
    assert parts <= set(RANK), f"give these a layer: {sorted(parts - set(RANK))}"


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, targets in graph().items():
        if module == "densekit":  # the public API re-exports what it likes
            continue
        for target in targets:
            if target == "densekit":
                upward.append(f"{module} -> densekit (the package: import from the module)")
            elif RANK[layer(target)] < RANK[layer(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports of a layer above:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
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
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_lazy_and_type_only_imports(tmp_path):
    """The test above would pass vacuously if it missed imports inside functions or under
    TYPE_CHECKING: check that it finds both."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from densekit.tasks import DenseTask\n"
        "def f():\n    from densekit.inference.tiles import tile\n"
    )
    path = tmp_path / "m.py"
    path.write_text(source)
    known = {"densekit.tasks", "densekit.inference.tiles", "densekit.data.m"}
    assert imports("densekit.data.m", path, known) == {"densekit.tasks", "densekit.inference.tiles"}
    g = defaultdict(set, graph())
    assert "densekit.inference.tiles" in g["densekit.cli"] or any(
        t.startswith("densekit.inference") for t in g["densekit.cli"]
    )

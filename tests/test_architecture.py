"""The package's layering: no import cycle and no upward import, function-local imports included.

An AST walk of ``advsample/`` (the logic of /work/shared/tools/import_cycles.py) against the layer
table in docs/architecture.md ("## Layers"): a module may import modules of its own layer or lower.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "advsample"


def module_paths(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} for every module of the package."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in its file (inside functions too)}."""

    def resolve(name: str) -> str | None:
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    edges = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
            for target in targets:
                found = resolve(target)
                if found and found != module:
                    edges[module].add(found)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_table(text: str) -> dict[str, int]:
    """{name: layer} from the "## Layers" table of docs/architecture.md (rows "| <n> ... | `a`, `b` |")."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for line in section.splitlines():
        row = re.match(r"\|\s*(\d+)[^|]*\|(.*)\|\s*$", line)
        if row:
            for name in re.findall(r"`([\w.]+)`", row.group(2)):
                layers[name] = int(row.group(1))
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of ``advsample.x.y``: that of ``x.y``, else of ``x`` (a package stands for its modules)."""
    if module == "advsample":
        return layers.get("advsample")
    name = module.removeprefix("advsample.")
    while name:
        if name in layers:
            return layers[name]
        name = name.rpartition(".")[0]
    return None


@pytest.fixture(scope="module")
def graph():
    return import_graph(module_paths())


@pytest.fixture(scope="module")
def layers():
    return layer_table((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_every_module_has_a_layer_and_imports_none_above_it(graph, layers):
    assert len(set(layers.values())) >= 5, f"layer table not found or too small: {layers}"
    unplaced = sorted(m for m in graph if layer_of(m, layers) is None)
    assert not unplaced, f"modules missing from the layer table of docs/architecture.md: {unplaced}"
    upward = sorted(f"{m} (layer {layer_of(m, layers)}) imports {t} (layer {layer_of(t, layers)})"
                    for m, targets in graph.items() for t in targets if layer_of(t, layers) > layer_of(m, layers))
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_walk_finds_cycles_and_upward_imports(tmp_path):
    """The checks can fail: a cycle through a function-local import and an upward import are found."""
    package = tmp_path / "advsample"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "structures.py").write_text("import numpy\n")
    (package / "models" / "__init__.py").write_text("from .base import check\n")
    (package / "models" / "base.py").write_text("def check():\n    from ..committee import Committee\n")
    (package / "committee.py").write_text("from .models import check\nfrom . import structures\n")
    (package / "loop.py").write_text("from .committee import Committee\n")
    (package / "structures2.py").write_text("def f():\n    from advsample.loop import x\n")
    graph = import_graph(module_paths(package))
    assert cycles(graph) == [["advsample.committee", "advsample.models", "advsample.models.base"]]
    layers = layer_table("## Layers\n| 0 data | `advsample`, `structures`, `structures2` |\n"
                         "| 2 committee | `committee`, `models` |\n| 4 runs | `loop` |\n")
    assert layer_of("advsample.models.base", layers) == 2
    upward = [(m, t) for m, targets in graph.items() for t in targets if layer_of(t, layers) > layer_of(m, layers)]
    assert upward == [("advsample.structures2", "advsample.loop")]

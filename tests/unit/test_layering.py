"""The import graph of latent's own modules, read with `ast` (nothing is imported): no cycle
among module-top imports, none closed by an import placed in a function, imports
going one way (indexer -> search -> generative, commands, cli) and always as `latent.…`.

    python tests/test_layering.py     # prints the graph's cycles and layer breaches
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("indexer", "search", "generative", "commands")  # scanned when present
TOP_FILES = ("__init__.py", "cli.py")
BARE = ("indexer", "search", "generative", "commands", "cli")  # top-level names latent no longer installs
# A module of the first layer may import none of the second's.
FORBIDDEN = [("latent.indexer", ("latent.search", "latent.generative", "latent.commands", "latent.cli")),
             ("latent.search", ("latent.generative", "latent.commands", "latent.cli"))]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    top: bool  # at module top (not in a function, and not under `if TYPE_CHECKING:`)

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({_path(self.source)}:{self.line}{'' if self.top else ', in a function'})"


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    found = {}
    for name in TOP_FILES:
        if (ROOT / name).exists():
            found["latent" if name == "__init__.py" else f"latent.{name[:-3]}"] = ROOT / name
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []:
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(("latent",) + (parts[:-1] if parts[-1] == "__init__" else parts))] = path
    return found


def _path(module: str) -> str:
    return str(modules()[module].relative_to(ROOT))


def _is_package(module: str, files: dict[str, Path]) -> bool:
    return files[module].name == "__init__.py"


def _imports(tree: ast.AST):
    """(node, at module top) for every import statement."""
    def walk(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, top
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from walk(child, False)  # never run: no cycle, but still checked for layering
            else:
                yield from walk(child, top)
    yield from walk(tree, True)


def graph() -> tuple[list[Edge], list[str]]:
    """Edges among latent's modules, and the bare (not `latent.…`) absolute imports found."""
    files = modules()
    edges, bare = [], []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = module if _is_package(module, files) else module.rpartition(".")[0]
        for node, top in _imports(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
                bare += [f"{_path(module)}:{node.lineno}: import {n}" for n in names if n.split(".")[0] in BARE]
                targets = names
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                    if source.split(".")[0] in BARE:
                        bare.append(f"{_path(module)}:{node.lineno}: from {source} import ...")
                # `from P import n` runs P, or only the submodule P.n when n is one
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]
            for target in dict.fromkeys(targets):
                while target and target not in files and "." in target:
                    target = target.rpartition(".")[0]  # `import latent.x.y` as far as it is ours
                if target in files and target != module:
                    edges.append(Edge(module, target, node.lineno, top))
    return edges, bare


def cycles(edges: list[Edge]) -> list[list[str]]:
    """One cycle through each strongly connected component of the graph (Tarjan)."""
    succ: dict[str, list[str]] = {}
    for e in edges:
        succ.setdefault(e.source, []).append(e.target)
    index, low, stack, on, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(succ):
        if v not in index:
            visit(v)
    out = []
    for component in components:  # a shortest cycle through the component's first module
        start = min(component)
        paths, seen = {start: [start]}, {start}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for w in succ.get(v, []):
                if w == start:
                    queue = []
                    out.append(paths[v] + [start])
                    break
                if w in component and w not in seen:
                    seen.add(w)
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return sorted(out)


def _edge(edges: list[Edge], a: str, b: str) -> Edge:
    return max((e for e in edges if e.source == a and e.target == b), key=lambda e: e.top)


def _show(cycle: list[str], edges: list[Edge]) -> str:
    return "\n    ".join(str(_edge(edges, a, b)) for a, b in zip(cycle, cycle[1:]))


def problems() -> dict[str, list[str]]:
    edges, bare = graph()
    top = [e for e in edges if e.top]
    found = {"cycles among module-top imports": [_show(c, top) for c in cycles(top)]}
    # an import moved into a function to break a circle leaves the circle in the full graph
    found["cycles closed by imports in functions"] = [
        _show(c, edges) for c in cycles(edges)
        if not any(set(c) <= set(t) for t in cycles(top)) and not all(_edge(edges, a, b).top for a, b in zip(c, c[1:]))]
    for layer, above in FORBIDDEN:
        found[f"{layer} importing {', '.join(above)}"] = [
            str(e) for e in edges
            if (e.source == layer or e.source.startswith(layer + "."))
            and any(e.target == a or e.target.startswith(a + ".") for a in above)]
    found["absolute imports of bare package names (use latent.…)"] = bare
    return found


def report() -> str:
    edges, _ = graph()
    lines = [f"{len(modules())} modules, {sum(e.top for e in edges)} module-top imports and "
             f"{sum(not e.top for e in edges)} imports in functions among them"]
    for title, items in problems().items():
        lines.append(f"{title}: {len(items) or 'none'}")
        lines += [f"  {item}" for item in items]
    return "\n".join(lines)


def test_imports_form_no_cycle_and_go_one_way():
    found = problems()
    print(report())
    assert not any(found.values()), report()


def test_the_scan_sees_every_layer_and_resolves_relative_imports():
    edges, _ = graph()
    pairs = {(e.source, e.target) for e in edges}
    assert ("latent.indexer.index", "latent.indexer.vector_index") in pairs  # from . import vector_index as vx
    assert ("latent.indexer.encoders.conse", "latent.indexer.paths") in pairs  # from ..paths import cache_dir
    assert ("latent.search.query", "latent.indexer.index") in pairs
    assert {"latent", "latent.cli", "latent.indexer", "latent.search", "latent.generative"} <= set(modules())
    assert cycles([Edge("a", "b", 1, True), Edge("b", "c", 1, True), Edge("c", "a", 1, True)]) == [["a", "b", "c", "a"]]


if __name__ == "__main__":
    print(report())


def test_the_cli_loads_without_the_heavy_optional_libraries():
    """Every command pays for what `import latent.cli` loads. sqlite-utils imports pandas (and
    so pyarrow) when it is installed, as it is with the [ray] extra; the store hides it."""
    import subprocess

    code = ("import sys, latent.cli; "
            "print(' '.join(m for m in ('pandas', 'pyarrow', 'ray', 'torch', 'sklearn', 'scipy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []

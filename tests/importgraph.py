"""The project's import graph, read from the source (no import runs), and the architecture's rules.

Every module of ``pipeline/``, ``stages/`` and ``telemetry/`` (installed as ``speechpipe.*``) is
parsed; every import of a ``speechpipe`` module counts, at module level or inside a function (both
run at run time), except those under ``if TYPE_CHECKING:``. ``python tests/importgraph.py`` prints
the graph's size, the imports between packages, and each rule's verdict.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "telemetry")
#: a module is a room with one job; past this many lines it is doing several.
MAX_MODULE_LINES = 400


@dataclass
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)
    imports: dict[str, set[str]] = field(default_factory=dict)  # module -> modules it imports

    def edges(self) -> list[tuple[str, str]]:
        return sorted((a, b) for a, targets in self.imports.items() for b in targets)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["speechpipe", *parts])


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every runtime import in ``tree``."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def build() -> Graph:
    graph = Graph()
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            graph.modules[module_name(path)] = path
    for name, path in graph.modules.items():
        targets: set[str] = set()
        for base, names in _imports(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py"):
            if not base.startswith("speechpipe"):
                continue
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in graph.modules]
            targets.update(subs or [base])
        targets.discard(name)
        graph.imports[name] = targets
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.imports.get(v, ()):
            if w not in graph.modules:
                continue
            if w not in index:
                strongconnect(w)
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph.modules:
        if v not in index:
            strongconnect(v)
    return found


def package_of(module: str) -> str:
    return module.split(".")[1]


def violations(graph: Graph) -> dict[str, list[str]]:
    """Each rule of the architecture, with the imports or modules that break it (empty: kept)."""
    rules: dict[str, list[str]] = {
        "stages/ imports nothing of pipeline/ or telemetry/": [],
        "telemetry/ imports nothing of pipeline/ but pipeline.hooks": [],
        "pipeline.hooks imports nothing of speechpipe but stages/": [],
        "no import cycle between modules": [],
        f"no module over {MAX_MODULE_LINES} lines": [],
    }
    keys = list(rules)
    for a, b in graph.edges():
        src, dst = package_of(a), package_of(b)
        if src == "stages" and dst != "stages":
            rules[keys[0]].append(f"{a} -> {b}")
        if src == "telemetry" and dst == "pipeline" and b != "speechpipe.pipeline.hooks":
            rules[keys[1]].append(f"{a} -> {b}")
        if a == "speechpipe.pipeline.hooks" and dst != "stages":
            rules[keys[2]].append(f"{a} -> {b}")
    rules[keys[3]] = [" <-> ".join(c) for c in cycles(graph)]
    for name, path in graph.modules.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            rules[keys[4]].append(f"{name}: {lines} lines")
    return rules


def main() -> int:
    graph = build()
    between: dict[tuple[str, str], int] = {}
    for a, b in graph.edges():
        key = (package_of(a), package_of(b))
        between[key] = between.get(key, 0) + 1
    print(f"{len(graph.modules)} modules, {len(graph.edges())} imports between them")
    for (src, dst), count in sorted(between.items()):
        print(f"  {src:9s} -> {dst:9s} {count:3d}")
    broken = 0
    for rule, bad in violations(graph).items():
        print(f"{'KEPT  ' if not bad else 'BROKEN'} {rule}")
        for line in bad:
            print(f"         {line}")
        broken += bool(bad)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

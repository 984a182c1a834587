"""The project's import graph, read from the source (no import runs), and the architecture's rules.

Every module of ``pipeline/``, ``stages/`` and ``telemetry/`` (installed as ``speechpipe.*``) is
parsed; every import of a ``speechpipe`` module counts: at module level, inside a function (both
run at run time) and under ``if TYPE_CHECKING:`` (a cycle that only the type checker sees is still
two modules that cannot be understood apart). ``python tests/importgraph.py`` prints
the graph's size, the imports between packages, and each rule's verdict.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "telemetry")
#: a module is a room with one job: split one by responsibility, never to fit a count. Past the
#: guide it is listed (worth a look); past the limit it is surely doing several things.
GUIDE_MODULE_LINES = 400
MAX_MODULE_LINES = 600
#: the pipeline's spine: its root modules (config, hooks, session, protocol, observability). Every
#: sub-package of ``pipeline/`` is a feature, and features meet only through their public face.
FEATURE_ROOT = "speechpipe.pipeline"


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


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import in ``tree``, ``TYPE_CHECKING`` ones included."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
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


def feature_of(graph: Graph, module: str) -> str | None:
    """The feature package a module belongs to (``speechpipe.pipeline.deploy`` for
    ``speechpipe.pipeline.deploy.router``), None for the spine and the other packages."""
    parts = module.split(".")
    if parts[:2] != FEATURE_ROOT.split("."):
        return None
    if len(parts) >= 4:
        return ".".join(parts[:3])
    path = graph.modules.get(module)
    return module if path is not None and path.name == "__init__.py" and len(parts) == 3 else None


def public_face(graph: Graph, feature: str) -> set[str]:
    """What other features may import of ``feature``: the package itself and the modules its
    ``__init__`` names in ``PUBLIC``."""
    face = {feature}
    tree = ast.parse(graph.modules[feature].read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PUBLIC" for t in node.targets):
            for name in ast.literal_eval(node.value):
                if f"{feature}.{name}" in graph.modules:
                    face.add(f"{feature}.{name}")
    return face


def violations(graph: Graph) -> dict[str, list[str]]:
    """Each rule of the architecture, with the imports or modules that break it (empty: kept)."""
    rules: dict[str, list[str]] = {
        "stages/ imports nothing of pipeline/ or telemetry/": [],
        "telemetry/ imports nothing of pipeline/ but pipeline.hooks": [],
        "pipeline.hooks imports nothing of speechpipe but stages/": [],
        "no import cycle between modules (TYPE_CHECKING imports count)": [],
        "features import each other only through their public face (the package, or a module in its PUBLIC)": [],
        f"no module over {MAX_MODULE_LINES} lines": [],
    }
    keys = list(rules)
    faces: dict[str, set[str]] = {}
    for a, b in graph.edges():
        src, dst = package_of(a), package_of(b)
        if src == "stages" and dst != "stages":
            rules[keys[0]].append(f"{a} -> {b}")
        if src == "telemetry" and dst == "pipeline" and b != "speechpipe.pipeline.hooks":
            rules[keys[1]].append(f"{a} -> {b}")
        if a == "speechpipe.pipeline.hooks" and dst != "stages":
            rules[keys[2]].append(f"{a} -> {b}")
        fa, fb = feature_of(graph, a), feature_of(graph, b)
        if fa and fb and fa != fb:
            face = faces.setdefault(fb, public_face(graph, fb))
            if b not in face:
                rules[keys[4]].append(f"{a} -> {b}")
    rules[keys[3]] = [" <-> ".join(c) for c in cycles(graph)]
    for name, lines in module_lines(graph).items():
        if lines > MAX_MODULE_LINES:
            rules[keys[5]].append(f"{name}: {lines} lines")
    return rules


def module_lines(graph: Graph) -> dict[str, int]:
    return {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in graph.modules.items()}


def tree_table(graph: Graph) -> list[str]:
    """Modules and lines per folder, for a reader of the layout."""
    folders: dict[str, list[int]] = {}
    for name, lines in module_lines(graph).items():
        folder = str(graph.modules[name].parent.relative_to(ROOT))
        folders.setdefault(folder, []).append(lines)
    return [f"  {folder + '/':32s} {len(n):3d} modules {sum(n):6d} lines" for folder, n in sorted(folders.items())]


def main() -> int:
    graph = build()
    between: dict[tuple[str, str], int] = {}
    for a, b in graph.edges():
        key = (package_of(a), package_of(b))
        between[key] = between.get(key, 0) + 1
    print(f"{len(graph.modules)} modules, {len(graph.edges())} imports between them")
    print("\n".join(tree_table(graph)))
    for (src, dst), count in sorted(between.items()):
        print(f"  {src:9s} -> {dst:9s} {count:3d}")
    broken = 0
    for rule, bad in violations(graph).items():
        print(f"{'KEPT  ' if not bad else 'BROKEN'} {rule}")
        for line in bad:
            print(f"         {line}")
        broken += bool(bad)
    over = {name: n for name, n in module_lines(graph).items() if n > GUIDE_MODULE_LINES}
    print(f"modules over the {GUIDE_MODULE_LINES}-line guide: {len(over)}")
    for name, n in sorted(over.items(), key=lambda kv: -kv[1]):
        print(f"         {name}: {n} lines")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

"""Print arrowflow's internal import graph: module-level edges, cycles (strongly connected
components) and the count of function-level imports per module.

    python tools/import_graph.py            # summary
    python tools/import_graph.py --edges    # every module-level edge too

Reads the source tree (arrowflow/, io/ as arrowflow.io, backends/ as arrowflow.backends);
imports nothing from it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = {
    "arrowflow": ROOT / "arrowflow",
    "arrowflow.io": ROOT / "io",
    "arrowflow.backends": ROOT / "backends",
}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in TREES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "arrowflow" and parts[:1] in (["io"], ["backends"]):
                continue
            found[".".join([package, *parts])] = path
    return found


def resolve(name: str, known: dict[str, Path]) -> str | None:
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> tuple[set[str], int, set[str]]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    inner: set[str] = set()
    local = 0
    type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking.update(id(n) for n in ast.walk(node))

    def targets(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        assert isinstance(node, ast.ImportFrom)
        base = node.module or ""
        if node.level:
            pkg = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                pkg = pkg.rpartition(".")[0]
            base = f"{pkg}.{base}" if base else pkg
        return [base] + [f"{base}.{alias.name}" for alias in node.names]

    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in type_checking:
            continue
        names = {resolve(t, known) for t in targets(node)} - {None, module}
        if not names:
            continue
        if node.col_offset == 0:
            top.update(n for n in names if n)
        else:
            local += 1
            inner.update(n for n in names if n)
    return top, local, inner


def sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edges", action="store_true")
    args = parser.parse_args()
    known = modules()
    graph: dict[str, set[str]] = {}
    every: dict[str, set[str]] = {}
    locals_: dict[str, int] = {}
    for module, path in known.items():
        graph[module], locals_[module], inner = imports_of(module, path, known)
        every[module] = graph[module] | inner
    print(f"modules: {len(known)}, module-level edges: {sum(len(v) for v in graph.values())}")
    for title, g in (("module-level imports", graph), ("all imports, function-level too", every)):
        cycles = [c for c in sccs(g) if len(c) > 1]
        print(f"cycles over {title} (strongly connected components > 1): {len(cycles)}")
        for c in sorted(cycles, key=len, reverse=True):
            print(f"  [{len(c)}] {', '.join(c)}")
    total = sum(locals_.values())
    print(f"function-level imports of arrowflow modules: {total}")
    for module, n in sorted(locals_.items(), key=lambda kv: -kv[1])[:10]:
        if n:
            print(f"  {n:4d} {module}")
    if args.edges:
        for module in sorted(graph):
            print(f"{module} -> {', '.join(sorted(graph[module]))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

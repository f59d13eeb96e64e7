#!/usr/bin/env python3
"""Fail on import cycles between the app's modules, lazy imports included.

Reads every module of app/src/grimbots with `ast` (nothing is imported or run), follows
every `import` and `from ... import` that names a grimbots module, wherever it sits (a
module's top or inside a function: a lazy import hides a cycle, it does not remove it),
and prints each cycle found: a submodule that imports names from its package's __init__
while that __init__ imports the submodule is one. It also prints every import of
grimbots.lab (the stand-ins, the audit, the test servers: lab and tests only) from the
product: only grimbots.cli may, and only inside its lab commands' bodies, so that a
production process never loads it. Exit code 1 when there is either. Part of `make lint`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "app" / "src"
PACKAGE = "grimbots"
LAB = "grimbots.lab"
LAB_IMPORTER = "grimbots.cli"  # its lab commands import grimbots.lab lazily


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, modules: set[str], top_level: bool = False) -> set[str]:
    """The grimbots modules `path` imports (a `from a import b` counts a.b when a module);
    with `top_level`, only the imports at the module's top (run when it is imported)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body if top_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module sits in
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    # `from grimbots.web import x` names the package's __init__ only: an edge to it. The
    # parent package Python loads before a submodule is not an edge (it is no import).
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def in_lab(module: str) -> bool:
    return module == LAB or module.startswith(LAB + ".")


def lab_imports(paths: list[Path], graph: dict[str, set[str]], modules: set[str]) -> list[str]:
    """Imports of grimbots.lab from outside it, but for LAB_IMPORTER's lazy ones."""
    found = []
    for path in paths:
        name = module_name(path)
        if in_lab(name):
            continue
        imported = graph[name]
        if name == LAB_IMPORTER:
            imported = imports_of(path, name, modules, top_level=True)
        found += [f"{name} -> {lab}" for lab in sorted(imported) if in_lab(lab)]
    return found


def main() -> int:
    paths = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imports_of(p, module_name(p), modules) for p in paths}
    found = cycles(graph)
    for component in found:
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
        print("import cycle: " + ", ".join(component))
        print("  " + "\n  ".join(edges))
    lab = lab_imports(paths, graph, modules)
    for edge in lab:
        print(f"product imports the lab: {edge} (only {LAB_IMPORTER}'s command bodies may)")
    if not found and not lab:
        print(f"import graph: {len(modules)} modules, no cycle, the lab imported by the CLI only")
    return 1 if found or lab else 0


if __name__ == "__main__":
    sys.exit(main())

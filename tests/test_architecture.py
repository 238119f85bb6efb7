"""The layering of docs/architecture.md, checked on the source (ast, nothing is imported):
import directions between the packages, no private name imported across modules, no import
circles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "convexnn"
# what each part may import from convexnn (besides itself); top-level modules sit above all
ALLOWED = {
    "model": {"model"},
    "data": {"model", "data"},
    "train": {"model", "train"},
    "solve": {"model", "train", "solve"},
    "analysis": {"model", "train", "solve", "analysis"},
}
TOP = {"model", "data", "train", "solve", "analysis", "top"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"
    if parts[1] in ALLOWED or parts[1] == "solvers":
        return parts[1]
    return "top"


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import of the file."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


FILES = sorted(p for p in PKG.rglob("*.py"))
EXTRA = sorted(p for d in ("experiments", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py"))


def test_import_directions():
    bad = []
    for path in FILES:
        src = _part(_module_name(path))
        for mod, _, line in _imports(path):
            if not mod.startswith("convexnn"):
                continue
            dst = _part(mod)
            if src == "solvers" or dst == src:
                continue
            if dst == "solvers":
                bad.append(f"{path.relative_to(ROOT)}:{line}: the core imports {mod}")
            elif src != "top" and dst not in ALLOWED[src]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {mod} ({dst})")
    assert not bad, "\n".join(bad)


def test_no_private_name_imported_across_modules():
    bad = []
    for path in FILES + EXTRA:
        for mod, names, line in _imports(path):
            if not mod.startswith(("convexnn", "experiments", "benchmarks", "tests")):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in mod.split(".") if p.startswith("_") and p != "__init__"]
            if private:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} {private}")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    graph: dict[str, set[str]] = {}
    names = {_module_name(p) for p in FILES}
    for path in FILES:
        me = _module_name(path)
        deps = set()
        for mod, imported, _ in _imports(path):
            for cand in [mod] + [f"{mod}.{n}" for n in imported]:
                if cand in names and cand != me:
                    deps.add(cand)
        graph[me] = deps
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
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
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    # a package's __init__ re-exporting its own modules is not a circle of ideas
    cycles = [c for c in cycles if not all(
        any(o.startswith(m + ".") or m.startswith(o + ".") for o in c if o != m) for m in c)]
    assert not cycles, cycles


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 450, "split this module (one module, one idea)"


def _long_functions(path: Path, limit: int) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [f"{n.name} ({n.end_lineno - n.lineno + 1} lines, line {n.lineno})"
            for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > limit]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_stay_short(path):
    assert not _long_functions(path, 80), "split these functions (one function, one step)"

"""No import circle among our packages: the graph of every import between our modules, read from the source (lazy,
function-level imports included, since they are the usual way a circle hides), has no cycle. A circle means two
modules that are really one concept, or one that reaches upward (docs/DESIGN.md §2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("nsarm", "dataset", "degradation", "captioning", "flows")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Our modules that `module` imports anywhere in its body: `import a.b`, `from a import b` (b a module or a name
    in a), relative imports resolved against the module's package."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != module}
    return found


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    files = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    known = set(files)
    return {m: imports_of(ast.parse(p.read_text(), filename=str(p)), m, p.name == "__init__.py", known)
            for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_our_packages():
    graph = import_graph(REPO)
    # the scan saw the real tree, lazy imports included (ray_trainer imports the loop inside its worker function)
    assert len(graph) > 80 and "nsarm.train.loop" in graph["nsarm.train.ray_trainer"]
    assert cycles(graph) == []


@pytest.mark.parametrize("files, expected", [
    # a lazy import inside a function closes the circle just the same
    ({"a/__init__.py": "", "a/x.py": "from a.y import f\n", "a/y.py": "def f():\n    from a import x\n"},
     [["a.x", "a.y"]]),
    # relative imports, three modules
    ({"a/__init__.py": "", "a/x.py": "from .y import g\n", "a/y.py": "from . import z\n", "a/z.py": "import a.x\n"},
     [["a.x", "a.y", "a.z"]]),
    # imports that point one way only
    ({"a/__init__.py": "", "a/x.py": "from a.y import f\n", "a/y.py": "import os\n"}, []),
])
def test_the_check_finds_circles(tmp_path, files, expected):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert cycles(import_graph(tmp_path, ("a",))) == expected

"""docs/DESIGN.md §2 layering, checked on the source: libraries never import Prefect or the flows; Ray only in a
`distributed.py` adapter (or nsarm/train/ray_trainer.py, nsarm/ray_loopback.py); MLflow only in nsarm/tracking.py and
nsarm/pyfunc.py (the pyfunc flavor must subclass mlflow.pyfunc.PythonModel); flows/ reaches the libraries through plain
import statements (no `importlib`, no `__import__`), so readers, IDEs and ruff see every dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARIES = ("nsarm", "dataset", "degradation", "captioning")
# plus every library's distributed.py; ray_loopback is the stack's `ray start` entry point for extra nodes
RAY_ADAPTERS = {"nsarm/train/ray_trainer.py", "nsarm/ray_loopback.py"}
MLFLOW_ADAPTERS = {"nsarm/tracking.py", "nsarm/pyfunc.py"}


def imported_tops(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file, lazy (function-level) imports included."""
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    return tops


def dynamic_imports(path: Path) -> list[str]:
    """`importlib` imports and `__import__(...)` calls in the file, as `line N: what`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "importlib" for a in node.names) or (
                isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "importlib"):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def library_files() -> dict[str, set[str]]:
    return {p.relative_to(REPO).as_posix(): imported_tops(p)
            for lib in LIBRARIES for p in sorted((REPO / lib).rglob("*.py"))}


def violations(files: dict[str, set[str]]) -> list[str]:
    bad = []
    for rel, tops in files.items():
        for top in sorted(tops & {"prefect", "flows"}):
            bad.append(f"{rel} imports {top} (libraries never import Prefect or the flows)")
        if "ray" in tops and not (rel.endswith("/distributed.py") or rel in RAY_ADAPTERS):
            bad.append(f"{rel} imports ray (only distributed.py adapters and nsarm/train/ray_trainer.py may)")
        if "mlflow" in tops and rel not in MLFLOW_ADAPTERS:
            bad.append(f"{rel} imports mlflow (only nsarm/tracking.py and nsarm/pyfunc.py may)")
    return bad


def test_libraries_follow_the_layering():
    files = library_files()
    assert len(files) > 50 and "nsarm/tracking.py" in files  # the scan saw the real tree
    assert violations(files) == []


@pytest.mark.parametrize("source, rel, expected", [
    ("def f():\n    import prefect\n", "nsarm/model.py", "imports prefect"),
    ("from ray import train\n", "dataset/shard.py", "imports ray"),
    ("import mlflow.tracking\n", "nsarm/train/loop.py", "imports mlflow"),
    ("from flows.params import TrainPreset\n", "captioning/worker.py", "imports flows"),
])
def test_the_check_catches_each_kind_of_violation(tmp_path, source, rel, expected):
    f = tmp_path / "m.py"
    f.write_text(source)
    found = violations({rel: imported_tops(f)})
    assert len(found) == 1 and expected in found[0]
    assert violations({"dataset/distributed.py": imported_tops(f)} if "ray" in source else {}) == []


def test_flows_import_the_libraries_plainly():
    flows = sorted((REPO / "flows").rglob("*.py"))
    assert {"build_dataset.py", "train_nsarm.py"} <= {p.name for p in flows}
    assert not (REPO / "flows" / "stages.py").exists()
    assert {p.relative_to(REPO).as_posix(): d for p in flows if (d := dynamic_imports(p))} == {}


@pytest.mark.parametrize("source, found", [
    ("import importlib\nmod = importlib.import_module('dataset.build')\n", 1),
    ("def f():\n    from importlib import import_module\n    return import_module('x')\n", 1),
    ("build = __import__('dataset.build')\n", 1),
    ("from dataset.build import build_shards\nimport importlib_metadata\n", 0),
])
def test_the_dynamic_import_check_catches_each_form(tmp_path, source, found):
    f = tmp_path / "m.py"
    f.write_text(source)
    assert len(dynamic_imports(f)) == found

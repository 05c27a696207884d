"""The test tree's own layout (issue 18.7): helpers tests share live in the `tests.support` package and are imported
by that name; everything else under tests/ is a test module or a conftest.py, and no test imports a conftest or
another test module (both were imported twice, under two names, with their module state split between the copies)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SUPPORT = TESTS / "support"


def imported_modules(source: str) -> set[str]:
    """Dotted names of every absolute import in `source`, lazy (function-level) imports included."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def forbidden(source: str, tree_modules: set[str]) -> list[str]:
    """The imports in `source` of a test-tree module by its bare name, or of a `tests.` module outside
    tests.support."""
    return sorted(name for name in imported_modules(source)
                  if name.split(".")[0] in tree_modules
                  or (name.split(".")[0] == "tests" and not name.startswith("tests.support")))


def test_shared_helpers_are_the_support_package():
    assert (SUPPORT / "__init__.py").is_file(), "tests/support/ must be a package (tests import tests.support.x)"
    strays = [p.relative_to(TESTS.parent).as_posix() for p in sorted(TESTS.rglob("*.py"))
              if SUPPORT not in p.parents and not p.name.startswith("test_") and p.name != "conftest.py"]
    assert not strays, f"helper modules outside tests/support/ (tests would import them bare): {strays}"


def test_tests_import_helpers_only_from_tests_support():
    files = sorted(TESTS.rglob("*.py"))
    tree_modules = {p.stem for p in files} | {"conftest"}
    bad = {p.relative_to(TESTS.parent).as_posix(): names for p in files
           if (names := forbidden(p.read_text(), tree_modules))}
    assert not bad, f"import these from tests.support instead: {bad}"


def test_the_check_catches_the_imports_the_old_tree_had():
    """A bare helper, a conftest by package name, another test module (lazily); tests.support passes."""
    tree = {"infra_files", "conftest", "test_transformer"}
    assert forbidden("from infra_files import REPO\n", tree) == ["infra_files"]
    assert forbidden("from tests.conftest import free_port\n", tree) == ["tests.conftest"]
    assert forbidden("def f():\n    from tests.unit.model.test_transformer import _tiny\n", tree) == [
        "tests.unit.model.test_transformer"]
    assert forbidden("import torch\nfrom tests.support.services import free_port\n", tree) == []


def test_model_tests_are_one_folder():
    assert not (TESTS / "unit" / "model_core").exists(), "tests/unit/model_core/ was merged into tests/unit/model/"
    assert (TESTS / "unit" / "model" / "data" / "tokenizer_keys.json").is_file()

"""The torchvision shim (nsarm/compat.py): without it the CUDA torchvision wheel beside the CPU torch cannot be
imported here; with it torchvision, BasicSR and transformers' LLaVA import in a fresh process, and calling it again
changes nothing. Each case runs in a new interpreter, since import state is per process.

Importing a library no longer runs the shim (tests/unit/test_import_cost.py), so every function that imports
torchvision or a package built on it calls `ensure_torchvision_importable()` first; a scan of the source checks it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("nsarm", "dataset", "degradation", "captioning", "flows", "benchmarks")
NEEDS_SHIM = {"torchvision", "basicsr", "pyiqa", "lpips", "timm"}  # each imports torchvision on import
# transformers' tokenizers and configs import without torchvision; its models and processors do not
LIGHT_TRANSFORMERS = re.compile(r"(Tokenizer|TokenizerFast|Config)$")


def _py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_without_the_shim_torchvision_breaks_or_is_native():
    out = _py("import torchvision")
    if out.returncode == 0:
        pytest.skip("torchvision's own ops load here (CUDA torch + CUDA torchvision): the shim is a no-op")
    assert "torchvision::nms does not exist" in out.stderr


def test_torchvision_imports_after_the_shim():
    """The shim must never break a torchvision whose own ops load (GPU machines): there, declaring the schemas
    first made torchvision's registration abort the process (found on an H100, torch 2.11 + torchvision 0.26)."""
    out = _py("import nsarm.compat as c\nfirst = c.ensure_torchvision_importable()\n"
              "import torchvision, torchvision.ops\nprint(first)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] in ("shimmed", "native")


def test_with_the_shim_torchvision_basicsr_and_llava_import():
    out = _py(
        "import nsarm.compat as c\n"
        "c.ensure_torchvision_importable()\n"
        "import torchvision.transforms.functional, basicsr.utils\n"
        "from transformers import LlavaForConditionalGeneration\n"
        "first = c.ensure_torchvision_importable(); again = c.ensure_torchvision_importable()\n"
        "print(first, again)\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    first, again = out.stdout.split()
    assert first in ("shimmed", "native") and again == first


def needs_shim(node: ast.AST) -> bool:
    """An import statement that loads torchvision (directly or through a package built on it)."""
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] in NEEDS_SHIM for a in node.names)
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        top = node.module.split(".")[0]
        return top in NEEDS_SHIM or (top == "transformers" and not all(
            LIGHT_TRANSFORMERS.search(a.name) for a in node.names))
    return False


def _is_shim_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and "ensure_torchvision_importable" in (
        getattr(node.func, "id", None), getattr(node.func, "attr", None))


def _own_nodes(scope: ast.AST):
    """The nodes of a module or function body, nested functions' bodies excluded."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            todo.extend(ast.iter_child_nodes(node))


def unshimmed_imports(scope: ast.AST, calls_before: tuple[int, ...] = ()) -> list[int]:
    """Lines of the imports in need of the shim with no shim call before them in their function or an enclosing
    scope (a module-level call serves a script's functions: scripts are entry points)."""
    own = list(_own_nodes(scope))
    calls = (*calls_before, *(n.lineno for n in own if _is_shim_call(n)))
    bad = [n.lineno for n in own if needs_shim(n) and not any(line < n.lineno for line in calls)]
    for node in own:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            bad += unshimmed_imports(node, calls)
    return sorted(bad)


def test_every_torchvision_import_calls_the_shim_first():
    files = [p for top in SCANNED for p in sorted((REPO / top).rglob("*.py"))]
    assert len(files) > 60
    bad = {p.relative_to(REPO).as_posix(): lines for p in files
           if (lines := unshimmed_imports(ast.parse(p.read_text(), filename=str(p))))}
    assert bad == {}, "call nsarm.compat.ensure_torchvision_importable() before these imports"


@pytest.mark.parametrize("source, bad", [
    ("def f():\n    import basicsr.utils\n", [2]),
    ("def f():\n    from transformers import T5EncoderModel\n", [2]),
    ("def f():\n    import pyiqa\n    ensure_torchvision_importable()\n", [2]),  # too late
    ("def f():\n    ensure_torchvision_importable()\n\ndef g():\n    import lpips\n", [5]),  # another function's
    ("def f():\n    c.ensure_torchvision_importable()\n    import torchvision\n", []),
    ("ensure_torchvision_importable()\n\ndef f():\n    import timm\n", []),  # a script's module-level call
    ("def f():\n    from transformers import AutoTokenizer, T5Config\n", []),  # no torchvision behind these
])
def test_the_shim_scan_catches_each_case(source, bad):
    assert unshimmed_imports(ast.parse(source)) == bad


def test_a_library_site_needs_no_shim_from_its_caller():
    """In a process where nothing else ran the shim (no tests/conftest.py), the library's own call is enough."""
    out = _py("import sys\nfrom degradation.reference import BasicSRChain\nBasicSRChain()\n"
              "print('basicsr.utils' in sys.modules)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "True"


def _install_checks() -> dict[str, str]:
    """The `python -c` import checks of the install paths: Makefile's setup stamp and the runtime image's build."""
    make = re.search(r'\$\(BIN\)/python -c "([^"]+)"', (REPO / "Makefile").read_text())
    docker = re.search(r'RUN python -c "([^"]+)"', (REPO / "infra/docker/Dockerfile").read_text())
    assert make and docker, "the install checks moved; update this test"
    return {"Makefile": make.group(1), "Dockerfile": docker.group(1).replace("\\\n", "")}


@pytest.mark.parametrize("where", ["Makefile", "Dockerfile"])
def test_the_install_checks_import_basicsr_in_a_fresh_process(where):
    """`make setup` and the image build end with an import check that includes BasicSR; since importing nsarm no
    longer runs the shim, the check itself must (a fresh clone's `make setup` failed on this)."""
    code = _install_checks()[where]
    assert "basicsr" in code
    out = _py(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK: torch" in out.stdout

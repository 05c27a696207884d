"""The torchvision shim (nsarm/compat.py): without it the CUDA torchvision wheel beside the CPU torch cannot be
imported here; with it torchvision, BasicSR and transformers' LLaVA import in a fresh process, and calling it again
changes nothing. Each case runs in a new interpreter, since import state is per process."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_without_the_shim_torchvision_breaks_or_is_native():
    out = _py("import torchvision")
    if out.returncode == 0:
        pytest.skip("torchvision's own ops load here (CUDA torch + CUDA torchvision): the shim is a no-op")
    assert "torchvision::nms does not exist" in out.stderr


def test_torchvision_imports_after_nsarm():
    """The shim must never break a torchvision whose own ops load (GPU machines): there, declaring the schemas
    first made torchvision's registration abort the process (found on an H100, torch 2.11 + torchvision 0.26)."""
    out = _py("import nsarm, nsarm.compat as c\nimport torchvision, torchvision.ops\n"
              "print(c.ensure_torchvision_importable())")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] in ("shimmed", "native")


def test_with_the_shim_torchvision_basicsr_and_llava_import():
    out = _py(
        "import nsarm, nsarm.compat as c\n"
        "import torchvision.transforms.functional, basicsr.utils\n"
        "from transformers import LlavaForConditionalGeneration\n"
        "first = c.ensure_torchvision_importable(); again = c.ensure_torchvision_importable()\n"
        "print(first, again)\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    first, again = out.stdout.split()
    assert first in ("shimmed", "native") and again == first

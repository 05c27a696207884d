"""Compatibility shims for the installed third-party stack (one place, explicit, idempotent).

`ensure_torchvision_importable()` works around the one known trap of the CPU install path: the only torchvision
wheel that matches torch 2.13.0 is a CUDA build whose C++ ops fail to register on a CPU-only torch, so
`import torchvision` dies with ``operator torchvision::nms does not exist``. That also breaks every `basicsr`
import and transformers' LLaVA image processing. Declaring the two missing operator schemas before torchvision's
first import lets its pure-Python parts (transforms, functional, models) import; its compiled ops stay unusable,
and nothing in this project calls them. Where torchvision's own ops load (CUDA torch + CUDA torchvision on a GPU
machine) they are loaded here and nothing is declared: declaring them first would make torchvision's own
registration abort the process (found on an H100 with torch 2.11 + torchvision 0.26).

Importing this module is cheap (torch loads at the first call). Who calls it: every function that imports
torchvision, BasicSR, pyiqa, lpips, timm or a transformers model, right before that import (tests/unit/test_compat.py
scans the source for it), and the entry points of scripts and worker processes.
"""

from __future__ import annotations

import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_state: dict[str, object] = {}


def torchvision_ops_registered() -> bool:
    """True when torch already knows the ``torchvision::nms`` operator (torchvision's C++ ops loaded)."""
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return True
    except RuntimeError:
        return False


def _torchvision_ops_load() -> bool | None:
    """Load torchvision's compiled ops the way its own import does (None: torchvision is not installed). True where
    they load (a matching torch + torchvision pair, e.g. CUDA on a GPU machine): then the schemas must NOT be
    declared here, since the library registers them itself and a second registration aborts the process."""
    import importlib.machinery
    import importlib.util
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_C" + suffix)
            if os.path.isfile(path):
                try:
                    torch.ops.load_library(path)
                    return True
                except (OSError, RuntimeError):
                    return False
    return False


def ensure_torchvision_importable() -> str:
    """Make `import torchvision` succeed on a CPU-only torch; safe to call any number of times, in any process.

    Returns:
        "native" when torchvision's own ops load (nothing declared), "shimmed" when the schemas were declared
        here, "imported" when torchvision was imported before this call (too late to help; nothing done),
        "absent" when torchvision is not installed.
    """
    if "result" in _state:
        return _state["result"]  # type: ignore[return-value]
    import torch

    if "torchvision" in sys.modules:
        result = "imported"
    elif torchvision_ops_registered():
        result = "native"
    else:
        loadable = _torchvision_ops_load()
        if loadable is None:
            result = "absent"
        elif loadable:
            result = "native"
        else:
            # Keep the Library object alive for the life of the process: dropping it would unregister the schemas.
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for schema in _SCHEMAS:
                try:
                    lib.define(schema)
                except RuntimeError:  # defined meanwhile by torchvision's own extension
                    pass
            _state["lib"] = lib
            result = "shimmed"
    _state["result"] = result
    return result

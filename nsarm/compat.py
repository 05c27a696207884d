"""Compatibility shims for the installed third-party stack (one place, explicit, idempotent).

`ensure_torchvision_importable()` works around the one known trap of the CPU install path: the only torchvision
wheel that matches torch 2.13.0 is a CUDA build whose C++ ops fail to register on a CPU-only torch, so
`import torchvision` dies with ``operator torchvision::nms does not exist``. That also breaks every `basicsr`
import and transformers' LLaVA image processing. Declaring the two missing operator schemas before torchvision's
first import lets its pure-Python parts (transforms, functional, models) import; its compiled ops stay unusable,
and nothing in this project calls them. Where torchvision's own ops load (CUDA torch + CUDA torchvision), the
schemas already exist and this is a no-op.
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


def ensure_torchvision_importable() -> str:
    """Make `import torchvision` succeed on a CPU-only torch; safe to call any number of times, in any process.

    Returns:
        "native" when torchvision's ops were already registered (nothing done), "shimmed" when the schemas were
        declared here, "imported" when torchvision was imported before this call (too late to help; nothing done).
    """
    if "result" in _state:
        return _state["result"]  # type: ignore[return-value]
    import torch

    if "torchvision" in sys.modules:
        result = "imported"
    elif torchvision_ops_registered():
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

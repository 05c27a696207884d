"""How flows reach library stages that may not be built yet: `stage("degrade", "degradation.distributed",
"run_degradation")` returns the function, or raises `StageNotBuilt` so the flow run fails with a clear
"not implemented yet: <stage>" instead of pretending to succeed."""

from __future__ import annotations

import importlib


class StageNotBuilt(RuntimeError):
    def __init__(self, stage: str, where: str):
        super().__init__(f"not implemented yet: {stage} (expected {where})")
        self.stage = stage


def stage(name: str, module: str, attr: str):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise StageNotBuilt(name, f"{module}.{attr}") from None
        raise
    fn = getattr(mod, attr, None)
    if fn is None:
        raise StageNotBuilt(name, f"{module}.{attr}")
    return fn

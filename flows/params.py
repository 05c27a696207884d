"""The deployments' parameter types and defaults, shared by both flows.

Each enum-like parameter is a `Literal`: Prefect turns it into a choice list in the run form and the server
refuses any other value before a flow run exists (`-p preset=tyny` → "'tyny' is not one of ['paper', 'tiny']").
tests/unit/flows/test_params.py checks these lists against the libraries' preset tables, so they cannot drift.

Defaults make the literal `prefect deployment run build-dataset/default` / `train-nsarm/default` work on the
embedded stack: build-dataset reads the bundled sample photos (`BUNDLED_SOURCE`) into `default_root()`, which is
also train-nsarm's default root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

ShardPreset = Literal["paper", "tiny"]  # dataset.config.PRESETS
DegradationPreset = Literal["realesrgan", "nsarm-light", "seesr", "pisasr"]  # degradation.config.PRESETS
Captioner = Literal["fixed", "llava", "metadata"]  # CaptionConfig.backend
TrainPreset = Literal["nsarm-8b-16gpu", "tiny"]  # nsarm.train.config.TRAIN_PRESETS

# The `source` that means "the sample photos bundled with scikit-image" (exported to a local folder first).
BUNDLED_SOURCE = "bundled:sample-photos"


def _state_dir() -> Path:
    from nsarm.stack import StackConfig

    return StackConfig.from_env().state_dir  # $NSARM_STATE_DIR (set by `nsarm stack up`) or ./.nsarm


def default_root() -> str:
    """Where build-dataset writes and train-nsarm reads when no `root` is given: `<stack state dir>/data`."""
    return str(_state_dir() / "data")


def resolve_source(source: str) -> str:
    """`BUNDLED_SOURCE` → a local folder holding the bundled photos (exported once, idempotent); any other source
    is returned unchanged."""
    if source != BUNDLED_SOURCE:
        return source
    from dataset.samples import export_sample_photos

    folder = _state_dir() / "sample-photos"
    export_sample_photos(folder)
    return str(folder)

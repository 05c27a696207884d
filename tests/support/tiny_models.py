"""Tiny model instances with non-trivial weights, shared by the model tests."""

from __future__ import annotations

import torch

from nsarm.transformer import TRANSFORMER_PRESETS, InfinityTransformer


def tiny_transformer(seed: int = 0) -> InfinityTransformer:
    """The `tiny` preset's transformer in eval mode, every weight nudged off its init (zero-initialised biases
    would hide bugs)."""
    torch.manual_seed(seed)
    model = InfinityTransformer(TRANSFORMER_PRESETS["tiny"]).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return model

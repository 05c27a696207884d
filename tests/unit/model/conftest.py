"""Fixtures of the model tests (model core: bits, scales, tokenizer; the whole model): one torch thread per test, a
fast tiny NSARM (slimmer tokenizer than the `tiny` preset) and the tiny T5."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nsarm.config import TOKENIZER_PRESETS
from nsarm.model import MODEL_PRESETS, build_model


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread (tests/conftest.py `one_torch_thread`)."""


def fast_tiny_config():
    """The `tiny` model preset with an 8-channel tokenizer: same shapes/scales/bits, ~10× cheaper to decode."""
    tok = dataclasses.replace(TOKENIZER_PRESETS["tiny"], base_ch=8, ch_mult=(1, 1, 1, 1), norm_groups=8)
    return dataclasses.replace(MODEL_PRESETS["tiny"], name="tiny-fast", tokenizer=tok)


@pytest.fixture(scope="session")
def fast_model():
    torch.manual_seed(0)
    model = build_model(fast_tiny_config()).eval()
    for p in model.transformer.parameters():  # make the transformer's logits depend on everything
        p.data.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="session")
def tiny_text_encoder():
    from nsarm.text import build_tiny_text_encoder

    return build_tiny_text_encoder(seed=0)

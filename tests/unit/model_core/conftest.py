"""Fixtures of the model-core tests."""

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread (tests/conftest.py `one_torch_thread`)."""

"""Fixtures of the model-core tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on the shared, loaded 2-core CI box two spinning OpenMP threads run small convolutions
    10-20× slower than one. Restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""Fixtures of the dataset integration tests: generated hostile files served by a misbehaving local server."""

from __future__ import annotations

import pytest

from dataset.config import PRESETS


@pytest.fixture(scope="session")
def hostile_files_(sample_photos):
    from dataset.hostile import hostile_files

    return hostile_files(next(p for p in sample_photos if p.photo_id == "skimage-coffee").path)


@pytest.fixture(scope="session")
def hostile_server(hostile_files_, sample_photos):
    from dataset.hostile import HostileServer

    files = dict(hostile_files_)
    files.update({p.path.name: p.path.read_bytes() for p in sample_photos})  # real photos for /slow/ and /noai/
    with HostileServer(files, delay=0.25) as srv:
        yield srv


@pytest.fixture(scope="session")
def fast_cfg():
    """Tiny preset with short timeouts so hang/timeout cases cost ≤ 2 s each."""
    return PRESETS["tiny"].override(connect_timeout=1.0, read_timeout=1.0, total_timeout=2.0, retries=1,
                                    backoff=0.05)

"""Fixtures for the Ray caption job: a tiny random LLaVA and a dataset root of small HR shards of real photos."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from captioning.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture
def ray_caption_root(tmp_path, sample_photos):
    """6 done HR shards of 2 photos each (256² JPEG + Unsplash-like .json), docs/DESIGN.md §3 layout."""
    from captioning.tiny import photo_jpeg, write_hr_shard

    root = str(tmp_path / "ds")
    samples = [(p.photo_id, photo_jpeg(p.path, 256), {"photo_description": p.path.stem}) for p in sample_photos]
    for shard in range(6):
        write_hr_shard(root, shard, samples[2 * shard:2 * shard + 2])
    return root


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread (tests/conftest.py `one_torch_thread`)."""

"""Fixtures of the training integration tests: a dataset root of real photos and shared run storage (the real
MLflow server is the session fixture `mlflow_server` of tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def train_root(sample_photos, tmp_path_factory):
    """10 real photos as a docs/DESIGN.md §3 dataset root (HR 256² JPEG, LR 64² PNG, captions), 2 shards; the other 2
    photos stay held out for evaluation."""
    from dataset.manifest import write_manifest
    from nsarm.train.photo_dataset import build_photo_dataset

    root = tmp_path_factory.mktemp("train-root")
    info = build_photo_dataset([p.path for p in sample_photos[:10]], str(root), hr_size=256, shard_size=6)
    info["manifest"] = write_manifest(str(root), name="train-test-photos")
    return info


@pytest.fixture(scope="session")
def degraded_root(sample_photos, tmp_path_factory):
    """The same 10 photos and split as `train_root`, but the LR comes from the real degradation stage
    (Real-ESRGAN preset, dataset seed 0): NSARM's setting, for the quality test."""
    from nsarm.train.photo_dataset import build_photo_dataset

    root = tmp_path_factory.mktemp("degraded-root")
    return build_photo_dataset([p.path for p in sample_photos[:10]], str(root), hr_size=256, shard_size=6,
                               degradation="realesrgan", deg_seed=0)


@pytest.fixture(scope="session")
def run_storage(tmp_path_factory):
    """Ray Train storage shared by the tests (its _cache/ keeps encoded latents between runs)."""
    return str(tmp_path_factory.mktemp("train-runs"))

"""Fixtures of the training tests: a tiny dataset root built from the bundled real photos."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def train_root(sample_photos, tmp_path_factory):
    """10 real photos as a docs/DESIGN.md §3 dataset root: HR 256² JPEG, LR 64² PNG, captions; 2 shards (6 + 4)."""
    from nsarm.train.photo_dataset import build_photo_dataset

    root = tmp_path_factory.mktemp("train-root")
    return build_photo_dataset([p.path for p in sample_photos[:10]], str(root), hr_size=256, shard_size=6)


@pytest.fixture(scope="session")
def latent_cache(train_root, tmp_path_factory):
    """Frozen-tokenizer latents of `train_root` for the seeded tiny tokenizer, encoded once per session."""
    import torch

    from nsarm.model import build_model
    from nsarm.train.data import BatchStream, pick_versions
    from nsarm.train.latents import LatentCache

    path = tmp_path_factory.getbasetemp() / "train-latents"
    torch.manual_seed(0)  # the loop's fresh init with TrainConfig.seed 0
    tok = build_model("tiny").tokenizer.eval()
    root = train_root["root"]
    versions = pick_versions(root)
    import hashlib

    cache = LatentCache(path, tok, hashlib.sha256(root.encode()).hexdigest()[:8] + "-" + versions.deg_hash)
    stream = BatchStream(root, versions, 0, 1, 5, 256, 64, block_size=64)
    for _ in range(2):
        cache.encode(tok, next(stream))
    return str(path)

"""The documented reader (README "Reading a dataset") with a PyTorch DataLoader on real LR shards (issue 21.8):
PyTorch's default collate fails on the per-sample degradation records (`deg.json`), `collate_samples` batches
them; `from_manifest` picks the complete LR and caption versions, and every batch joins HR, LR and caption by key."""

from __future__ import annotations

import pytest
import torch

from dataset import contract
from dataset.reader import DatasetReader, collate_samples, complete_versions


@pytest.fixture(scope="module")
def real_root(tmp_path_factory, sample_photos):
    """6 photos at 256² (the tiny preset; Real-ESRGAN needs >= 148 px) in 2 HR shards, degraded for real in
    process (LR 64²) and captioned from metadata."""
    from captioning.config import caption_config
    from captioning.worker import caption_shards
    from dataset.build import build_shards
    from dataset.config import PRESETS as PRESETS_HR
    from dataset.manifest import write_manifest
    from degradation.config import PRESETS
    from degradation.worker import DegradeShard

    root = str(tmp_path_factory.mktemp("real_root"))
    cfg = PRESETS_HR["tiny"].override(shard_size=3, threads=2)
    assert build_shards(str(sample_photos[0].path.parent), root, cfg, limit=6, use_ray=False)["samples"] == 6
    worker = DegradeShard(root, PRESETS["realesrgan"], seed=0, batch_size=4, device="cpu")
    assert all(worker(s).ok for s in contract.list_shards(root))
    assert not caption_shards(root, caption_config("metadata"))["shards_failed"]
    write_manifest(root, name="reader-test")
    return root


def test_default_collate_fails_on_real_degradation_records(real_root):
    reader = DatasetReader.from_manifest(real_root, shuffle=False, batch_size=4)
    with pytest.raises((KeyError, RuntimeError, TypeError)):  # KeyError: lr_meta keys differ per sample
        next(iter(torch.utils.data.DataLoader(reader, batch_size=4)))


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches_join_hr_lr_and_captions_by_key(real_root, workers):
    deg_hash, cap_hash = complete_versions(real_root)
    reader = DatasetReader.from_manifest(real_root, shuffle=False, batch_size=4)
    assert (reader.deg_hash, reader.cap_hash) == (deg_hash, cap_hash) and deg_hash and cap_hash
    loader = torch.utils.data.DataLoader(reader, batch_size=4, num_workers=workers, collate_fn=collate_samples)
    batches = list(loader)
    assert sum(len(b["key"]) for b in batches) == 6
    by_key = {s["key"]: s for s in DatasetReader(real_root, deg_hash=deg_hash, cap_hash=cap_hash, shuffle=False)}
    for b in batches:
        assert b["hr"].shape == (len(b["key"]), 256, 256, 3) and b["hr"].dtype == torch.uint8
        assert b["lr"].shape == (len(b["key"]), 64, 64, 3)
        for i, key in enumerate(b["key"]):
            one = by_key[key]
            assert torch.equal(b["lr"][i], torch.from_numpy(one["lr"])) and b["caption"][i] == one["caption"]
            assert b["lr_meta"][i] == one["lr_meta"] and b["lr_meta"][i]  # the sampled parameters, as recorded

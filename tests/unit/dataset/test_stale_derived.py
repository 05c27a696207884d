"""A rewritten HR shard (`--retry-failed`, cross-shard dedup) makes the LR and caption shards derived from it stale:
their stats record the HR tar's sha256, a rerun redoes a shard whose HR hash changed and still skips the others."""

from __future__ import annotations

import pytest

from captioning.config import CaptionConfig
from captioning.tiny import photo_jpeg, write_hr_shard
from captioning.worker import CaptionWorker
from dataset import contract
from degradation.config import DegradationConfig
from degradation.worker import DegradeShard


@pytest.fixture
def two_shards(sample_photos, tmp_path, one_torch_thread):
    samples = [(p.photo_id, photo_jpeg(p.path, 160), {"photo_description": p.path.stem}) for p in sample_photos[:6]]
    root = str(tmp_path / "ds")
    write_hr_shard(root, 0, samples[:3])
    write_hr_shard(root, 1, samples[3:5])
    return root, samples


def _keys(url):
    return [k for k, _, err in contract.iter_tar_samples(url) if not err]


def test_rewritten_hr_shard_redoes_lr_and_captions_only_there(two_shards):
    root, samples = two_shards
    deg = DegradeShard(root, DegradationConfig(), seed=0, batch_size=4)
    cap = CaptionWorker(root, CaptionConfig(backend="metadata"))
    first = [deg(s) for s in (0, 1)] + [cap(s) for s in (0, 1)]
    assert all(r.ok and not r.skipped for r in first) and [r.n for r in first] == [3, 2, 3, 2], first
    lr_stats = contract.read_json(contract.lr_stats(root, deg.deg_hash, 1))
    assert lr_stats["hr_tar_sha256"] == contract.hr_tar_sha256(root, 1) is not None
    assert all(r.skipped for r in [deg(0), deg(1), cap(0), cap(1)])  # nothing changed: rerun = resume

    # Shard 1 is rewritten (as --retry-failed does when a failed row now downloads): one more sample.
    write_hr_shard(root, 1, samples[3:6])
    again = {"lr0": deg(0), "lr1": deg(1), "cap0": cap(0), "cap1": cap(1)}
    assert again["lr0"].skipped and again["cap0"].skipped
    assert not again["lr1"].skipped and again["lr1"].n == 3, again["lr1"]
    assert not again["cap1"].skipped and again["cap1"].n == 3, again["cap1"]
    assert _keys(contract.lr_tar(root, deg.deg_hash, 1)) == [k for k, _, _ in samples[3:6]]
    stats = contract.read_json(contract.caption_stats(root, cap.hash, 1))
    assert stats["hr_tar_sha256"] == contract.hr_tar_sha256(root, 1) and stats["n"] == 3


def test_stats_without_hr_hash_count_as_done(two_shards):
    """Stats written before hashes were recorded are trusted, so upgrading does not redo a whole dataset."""
    root, _ = two_shards
    deg = DegradeShard(root, DegradationConfig(), seed=0, batch_size=4)
    assert not deg(0).skipped
    url = contract.lr_stats(root, deg.deg_hash, 0)
    st = contract.read_json(url)
    del st["hr_tar_sha256"]
    contract.write_json_atomic(url, st)
    assert contract.done_stats(url, root, 0) == st and deg(0).skipped
    assert contract.done_stats(contract.lr_stats(root, deg.deg_hash, 1), root, 1) is None  # never done

"""The training reader: joins by key, rank × worker split covers every sample once, deterministic per-epoch
shuffle, and a resume position that neither repeats nor skips."""

from __future__ import annotations

import pytest
import torch

from dataset.reader import DatasetReader

DEG, CAP = "deg0test", "cap0test"  # written by the tiny_root fixture (conftest.py)


def keys_of(reader) -> list[str]:
    return [s["key"] for s in reader]


def test_joined_samples(tiny_root):
    samples = list(DatasetReader(tiny_root, deg_hash=DEG, cap_hash=CAP, shuffle=False))
    assert len(samples) == 12
    for s in samples:
        assert s["hr"].shape == (64, 64, 3) and s["hr"].dtype.name == "uint8"
        assert s["lr"].shape == (16, 16, 3) and s["lr_meta"] == {"seed": 1}
        assert s["caption"] == f"caption of {s['key']}" and s["meta"]["key"] == s["key"]
        # the LR fixture is the HR subsampled: the join is by key, not by position
        assert abs(s["lr"].astype(int) - s["hr"][::4, ::4].astype(int)).mean() < 12


def test_missing_versions_are_named(tiny_root):
    with pytest.raises(FileNotFoundError, match="degradation nope"):
        DatasetReader(tiny_root, deg_hash="nope")
    with pytest.raises(FileNotFoundError, match="captions of shard 000000 for nope"):
        DatasetReader(tiny_root, cap_hash="nope")


def test_shuffle_is_deterministic_per_epoch(tiny_root):
    r = DatasetReader(tiny_root, seed=3, block_size=3, decode=False)
    e0 = keys_of(r)
    r.set_epoch(1)
    e1 = keys_of(r)
    assert sorted(e0) == sorted(e1) and len(set(e0)) == 12 and e0 != e1
    again = DatasetReader(tiny_root, seed=3, block_size=3, decode=False)
    assert keys_of(again) == e0
    plain = keys_of(DatasetReader(tiny_root, shuffle=False, decode=False))
    assert plain != e0 and sorted(plain) == sorted(e0)


@pytest.mark.parametrize("world,workers,batch", [(1, 1, 1), (2, 1, 1), (3, 2, 2), (2, 2, 3)])
def test_rank_and_worker_split_covers_every_sample_once(tiny_root, world, workers, batch):
    seen = []
    for rank in range(world):
        r = DatasetReader(tiny_root, rank=rank, world_size=world, seed=5, block_size=2, batch_size=batch,
                          decode=False)
        loader = torch.utils.data.DataLoader(r, batch_size=batch, num_workers=workers,
                                             collate_fn=lambda b: [s["key"] for s in b])
        got = [k for b in loader for k in b]
        assert len(got) == len(r)
        # DataLoader hands out worker batches round-robin: the rank sees exactly its range, in sequence order
        single = keys_of(DatasetReader(tiny_root, rank=rank, world_size=world, seed=5, block_size=2,
                                       batch_size=batch, decode=False))
        assert got == single
        seen += got
    assert sorted(seen) == sorted(keys_of(DatasetReader(tiny_root, decode=False)))
    assert len(seen) == 12


def test_drop_last_gives_equal_ranks(tiny_root):
    lens = [len(DatasetReader(tiny_root, rank=r, world_size=5, drop_last=True)) for r in range(5)]
    assert lens == [2] * 5
    lens = [len(DatasetReader(tiny_root, rank=r, world_size=5)) for r in range(5)]
    assert sum(lens) == 12 and max(lens) - min(lens) <= 1


@pytest.mark.parametrize("consumed", [0, 1, 4, 5, 11, 12])
def test_resume_neither_repeats_nor_skips(tiny_root, consumed):
    full = DatasetReader(tiny_root, seed=9, block_size=3, decode=False)
    full.set_epoch(2)
    order = keys_of(full)
    interrupted = DatasetReader(tiny_root, seed=9, block_size=3, decode=False)
    interrupted.set_epoch(2)
    state = interrupted.state_dict(consumed=consumed)  # what a checkpoint stores after `consumed` samples
    resumed = DatasetReader(tiny_root, seed=9, block_size=3, decode=False)
    resumed.load_state_dict(state)
    assert order[:consumed] + keys_of(resumed) == order


def test_resume_with_workers_and_ranks(tiny_root):
    kw = dict(world_size=2, seed=1, block_size=4, batch_size=2, decode=False)
    whole = keys_of(DatasetReader(tiny_root, rank=1, **kw))
    r = DatasetReader(tiny_root, rank=1, **kw)
    r.load_state_dict({"epoch": 0, "consumed": 2, "seed": 1, "num_samples": 12})
    loader = torch.utils.data.DataLoader(r, batch_size=2, num_workers=2, collate_fn=lambda b: [s["key"] for s in b])
    assert whole[:2] + [k for b in loader for k in b] == whole


def test_state_from_another_dataset_is_refused(tiny_root):
    with pytest.raises(ValueError, match="another dataset or seed"):
        DatasetReader(tiny_root).load_state_dict({"epoch": 0, "consumed": 3, "seed": 0, "num_samples": 99})


def test_in_process_position_follows_iteration(tiny_root):
    r = DatasetReader(tiny_root, seed=2, decode=False)
    order = keys_of(DatasetReader(tiny_root, seed=2, decode=False))
    it = iter(r)
    head = [next(it)["key"] for _ in range(5)]
    state = r.state_dict()
    assert state["consumed"] == 5
    resumed = DatasetReader(tiny_root, seed=2, decode=False)
    resumed.load_state_dict(state)
    assert head + keys_of(resumed) == order


def test_lr_tar_out_of_hr_order_is_an_error(tiny_root, tmp_path):
    import shutil

    from dataset import contract

    root = str(tmp_path / "copy")
    shutil.copytree(tiny_root, root)
    samples = [(k, f) for k, f, _ in contract.iter_tar_samples(contract.lr_tar(root, DEG, 0))]
    contract.put_atomic(contract.lr_tar(root, DEG, 0), contract.tar_bytes(samples[::-1]))
    with pytest.raises(ValueError, match="LR tars must follow HR order"):
        list(DatasetReader(root, deg_hash=DEG, shuffle=False, decode=False))

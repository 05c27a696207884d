"""The training latent cache round trip: what it returns (written now or read back later) is the fresh encode, bit for
bit on CPU, in batch order; another tokenizer never reads it."""

from __future__ import annotations

import dataclasses

import pytest
import torch


@pytest.fixture(scope="module")
def tokenizer_and_batch(train_root):
    from nsarm.model import build_model
    from nsarm.train.data import BatchStream, pick_versions

    torch.manual_seed(0)
    tok = build_model("tiny").tokenizer.eval()
    root = train_root["root"]
    stream = BatchStream(root, pick_versions(root), 0, 1, 4, 256, 64, block_size=64)
    return tok, next(stream)


def _subset(batch, idx):
    return dataclasses.replace(batch, hr_B3HW=batch.hr_B3HW[idx], lr_B3hw=batch.lr_B3hw[idx],
                               captions=[batch.captions[i] for i in idx], keys=[batch.keys[i] for i in idx])


def test_cached_latents_equal_a_fresh_encode_bitwise(tokenizer_and_batch, tmp_path):
    from nsarm.train.latents import LatentCache
    from nsarm.train.steps import encode_pair

    tok, batch = tokenizer_and_batch
    fresh_hr, fresh_lr = encode_pair(tok, batch.hr_B3HW, batch.lr_B3hw)
    written = LatentCache(tmp_path, tok, "ds")
    z_hr, z_lr = written.encode(tok, batch)  # all misses: encoded and written
    assert (written.hits, written.misses) == (0, len(batch.keys))
    assert torch.equal(z_hr, fresh_hr) and torch.equal(z_lr, fresh_lr)
    assert len(list(written.dir.glob("*.safetensors"))) == len(batch.keys)
    assert not list(written.dir.glob("*.tmp"))  # written under a temp name, renamed

    read = LatentCache(tmp_path, tok, "ds")  # a later epoch / another worker: all hits, nothing re-encoded
    z_hr2, z_lr2 = read.encode(tok, batch)
    assert (read.hits, read.misses) == (len(batch.keys), 0)
    assert z_hr2.dtype == fresh_hr.dtype and torch.equal(z_hr2, fresh_hr) and torch.equal(z_lr2, fresh_lr)


def test_partly_cached_batch_keeps_its_order(tokenizer_and_batch, tmp_path):
    from nsarm.train.latents import LatentCache

    tok, batch = tokenizer_and_batch
    cache = LatentCache(tmp_path, tok, "ds")
    cache.encode(tok, _subset(batch, [2, 0]))  # two samples cached first, out of order
    order = [3, 0, 1, 2]
    z_hr, z_lr = cache.encode(tok, _subset(batch, order))
    assert (cache.hits, cache.misses) == (2, 4)
    alone = [LatentCache(None, tok, "ds").encode(tok, _subset(batch, [i])) for i in order]
    torch.testing.assert_close(z_hr, torch.cat([a[0] for a in alone]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_lr, torch.cat([a[1] for a in alone]), atol=1e-5, rtol=1e-5)


def test_another_tokenizer_never_reads_the_cache(tokenizer_and_batch, tmp_path):
    import copy

    from nsarm.train.latents import LatentCache

    tok, batch = tokenizer_and_batch
    LatentCache(tmp_path, tok, "ds").encode(tok, batch)
    other = copy.deepcopy(tok)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    cache = LatentCache(tmp_path, other, "ds")
    assert cache.dir != LatentCache(tmp_path, tok, "ds").dir
    cache.encode(other, batch)
    assert (cache.hits, cache.misses) == (0, len(batch.keys))

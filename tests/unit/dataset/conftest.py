"""Fixtures of the dataset unit tests: a tiny config and a small dataset root built once from the bundled photos
(local folder source: no network), with LR tars and captions written to the docs/DESIGN.md §3 contract."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dataset import contract
from dataset.config import PRESETS

DEG, CAP = "deg0test", "cap0test"


@pytest.fixture(scope="session")
def tiny_cfg():
    return PRESETS["tiny"].override(image_size=64, min_side=64, shard_size=5, threads=2)


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory, sample_photos, tiny_cfg):
    """12 photos → 3 HR shards (5, 5, 2) at 64², plus a fake degradation version and captions for the joins."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dataset.build import build_shards
    from dataset.images import decode_rgb

    root = str(tmp_path_factory.mktemp("tiny_root"))
    summary = build_shards(str(sample_photos[0].path.parent), root, tiny_cfg, use_ray=False)
    assert summary["totals"]["successes"] == 12, summary
    for shard in contract.list_shards(root):
        samples = []
        for key, files, err in contract.iter_tar_samples(contract.hr_tar(root, shard)):
            assert err is None
            lr = decode_rgb(files["jpg"])[::4, ::4]  # 16² "LR": enough to check the join is by key
            samples.append((key, {"png": _png(np.ascontiguousarray(lr)), "deg.json": b'{"seed": 1}'}))
        contract.put_atomic(contract.lr_tar(root, DEG, shard), contract.tar_bytes(samples))
        contract.write_json_atomic(contract.lr_stats(root, DEG, shard), {"n": len(samples)})
        keys = [k for k, _ in samples]
        buf = io.BytesIO()
        pq.write_table(pa.table({"key": keys, "caption": [f"caption of {k}" for k in keys]}), buf)
        contract.put_atomic(contract.caption_parquet(root, CAP, shard), buf.getvalue())
    return root

"""Fixtures for the degradation integration tests: HR shards built from the real sample photos (256², JPEG q95,
`{key}.jpg` + `{key}.json`, plus the HR `_stats.json` done-marker) under a local or s3:// root, per docs/DESIGN.md §3."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image, ImageOps

from dataset import contract


def hr_jpeg(path, side: int = 256) -> bytes:
    with Image.open(path) as im:
        im = ImageOps.fit(im.convert("RGB"), (side, side), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def sample(photo, side: int = 256) -> tuple[str, dict[str, bytes]]:
    meta = {"photo_id": photo.photo_id, "width": photo.width, "height": photo.height}
    return photo.photo_id, {"jpg": hr_jpeg(photo.path, side), "json": json.dumps(meta).encode()}


def write_hr_shard(root: str, shard: int, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    contract.put_atomic(contract.hr_tar(root, shard), contract.tar_bytes(samples))
    contract.write_json_atomic(contract.hr_stats(root, shard), {"shard": shard, "n_ok": len(samples)})


@pytest.fixture
def make_hr_root(sample_photos):
    """make_hr_root(root, per_shard=[3, 2]) writes shards of real photos; returns {shard: [keys]}."""

    def make(root: str, per_shard=(3, 2)) -> dict[int, list[str]]:
        photos, out, i = list(sample_photos), {}, 0
        for shard, n in enumerate(per_shard):
            samples = [sample(p) for p in photos[i:i + n]]
            i += n
            write_hr_shard(root, shard, samples)
            out[shard] = [k for k, _ in samples]
        return out

    return make


@pytest.fixture
def hr_tools():
    """The helpers above for tests that build their own shards: .sample(photo, side), .write_hr_shard(root, i, s)."""
    import types

    return types.SimpleNamespace(sample=sample, write_hr_shard=write_hr_shard)

"""Source readers and deterministic sharding: Unsplash TSV (width parameter), csv/tsv/parquet URL lists, folders."""

from __future__ import annotations

import pandas as pd
import pytest

from dataset.config import ShardConfig
from dataset.samples import write_unsplash_tsv
from dataset.sources import (
    SourceRow,
    detect_kind,
    plan_shards,
    read_source,
    sanitize_key,
    unsplash_request_width,
    with_width,
)


def test_with_width_appends_or_replaces_the_w_parameter():
    assert with_width("https://images.unsplash.com/photo-1", 1024) == "https://images.unsplash.com/photo-1?w=1024"
    assert with_width("https://x.test/p?ixid=abc", 2048) == "https://x.test/p?ixid=abc&w=2048"
    assert with_width("https://x.test/p?w=400&q=80", 1024) == "https://x.test/p?q=80&w=1024"


def test_unsplash_width_keeps_the_short_side_at_image_size():
    cfg = ShardConfig(image_size=1024)
    assert unsplash_request_width(cfg, "6000", "4000") == 1536  # landscape 3:2 → height 1024 at w=1536
    assert unsplash_request_width(cfg, "4000", "6000") == 1024  # portrait: width is the short side
    assert unsplash_request_width(cfg, "1200", "600") == 1200  # never more than the original width
    assert unsplash_request_width(cfg, "", "") == 2048  # unknown aspect
    assert unsplash_request_width(ShardConfig(unsplash_width=3000), "6000", "4000") == 3000


def test_unsplash_tsv_rows(sample_photos, tmp_path):
    tsv = write_unsplash_tsv(sample_photos, "http://img.test/base", tmp_path / "photos.tsv000")
    cfg = ShardConfig(image_size=256)
    assert detect_kind(str(tmp_path)) == "unsplash" and detect_kind(str(tsv)) == "unsplash"
    rows = read_source(str(tmp_path), cfg)
    assert [r.key for r in rows] == [p.photo_id for p in sample_photos]
    retina = next(r for r in rows if r.key == "skimage-retina")  # 1411² → w=256 (square)
    assert retina.source == "http://img.test/base/retina.jpg?w=256"
    chelsea = next(r for r in rows if r.key == "skimage-chelsea")  # 451x300 → ceil(256 * 1.503) = 385
    assert chelsea.source.endswith("chelsea.png?w=385")
    assert chelsea.caption == "a photograph: chelsea" and chelsea.meta["ai_description"].startswith("chelsea")
    assert len(read_source(str(tsv), cfg, limit=5)) == 5


@pytest.mark.parametrize("ext", ["csv", "tsv", "parquet"])
def test_table_sources_with_configurable_columns(tmp_path, ext):
    df = pd.DataFrame({"link": [f"http://h.test/{i}.jpg" for i in range(7)], "text": [f"c{i}" for i in range(7)],
                       "uid": [f"id.{i}" for i in range(7)], "extra": list("abcdefg")})
    path = tmp_path / f"list.{ext}"
    if ext == "parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="\t" if ext == "tsv" else ",", index=False)
    rows = read_source(str(path), ShardConfig(), limit=6, url_col="link", caption_col="text", id_col="uid")
    assert len(rows) == 6 and rows[2] == SourceRow("http://h.test/2.jpg", "id.2", "c2", {"extra": "c"})
    with pytest.raises(ValueError, match="no url column 'url'.*link"):
        read_source(str(path), ShardConfig())


def test_folder_source_lists_images_recursively(sample_photos, tmp_path):
    folder = sample_photos[0].path.parent
    rows = read_source(str(folder), ShardConfig())
    assert len(rows) == 12 and all(r.origin == "file" for r in rows)
    assert [r.key for r in rows] == sorted(r.key for r in rows)  # sorted paths: deterministic order
    with pytest.raises(FileNotFoundError, match="no rows"):
        read_source(str(tmp_path), ShardConfig())
    with pytest.raises(ValueError, match="not a folder"):
        read_source(str(tmp_path / "nothing.bin"), ShardConfig())


def test_plan_shards_is_deterministic_with_unique_dot_free_keys():
    rows = [SourceRow(f"http://h/{i}", key=k) for i, k in
            enumerate(["a.b", "a.b", None, "../etc/passwd", "x y", "", None])]
    shards = plan_shards(rows, 3)
    assert [s.shard_id for s in shards] == [0, 1, 2] and [len(s) for s in shards] == [3, 3, 1]
    keys = [k for s in shards for k in s.keys]
    assert keys == ["a_b", "a_b_1", "0000000002", "etc_passwd", "x_y", "0000010002", "0000020000"]
    assert len(set(keys)) == len(keys) and not any("." in k or "/" in k for k in keys)
    assert plan_shards(rows, 3) == shards
    assert sanitize_key("photo.id/..\\x") == "photo_id_x"
    wide = plan_shards([SourceRow(f"u{i}") for i in range(3)], 20000)
    assert wide[0].keys[2] == "00000000002"  # 5-digit index when a shard holds more than 10,000 rows

"""Source readers and deterministic sharding: Unsplash TSV/CSV parts (imgix parameters, exact ids), csv/tsv/parquet
URL lists, folders."""

from __future__ import annotations

import pandas as pd
import pytest

from dataset.config import ShardConfig
from dataset.samples import UNSPLASH_COLUMNS, write_unsplash_tsv
from dataset.sources import (
    SourceRow,
    detect_kind,
    imgix_url,
    plan_shards,
    read_source,
    sanitize_key,
    unsplash_request_width,
)


def test_imgix_url_asks_for_full_quality_and_never_to_enlarge():
    assert (imgix_url("https://images.unsplash.com/photo-1", 1024, "png", 100)
            == "https://images.unsplash.com/photo-1?w=1024&fit=max&fm=png&q=100")
    assert imgix_url("https://x.test/p?ixid=abc", 2048, "jpg", 100) == "https://x.test/p?ixid=abc&w=2048&fit=max&fm=jpg&q=100"
    # whatever the row's URL carried that could enlarge or degrade (fit=clip, dpr, auto=compress, q, h) is replaced
    got = imgix_url("https://x.test/p?w=400&q=80&fit=clip&dpr=2&auto=compress,format&h=9&ixlib=rb", 1024, "png", 100)
    assert got == "https://x.test/p?ixlib=rb&w=1024&fit=max&fm=png&q=100"


def test_imgix_output_is_configurable_and_validated():
    cfg = ShardConfig(unsplash_format="jpg", unsplash_quality=95)
    assert cfg.to_dict()["unsplash_format"] == "jpg" and cfg.to_dict()["unsplash_quality"] == 95  # → config.json
    with pytest.raises(ValueError, match="unsplash_format.*'gif'"):
        ShardConfig(unsplash_format="gif")
    with pytest.raises(ValueError, match="unsplash_quality.*0"):
        ShardConfig(unsplash_quality=0)


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
    assert retina.source == "http://img.test/base/retina.jpg?w=256&fit=max&fm=png&q=100"
    assert (retina.width, retina.height) == (1411, 1411) and retina.meta["photo_id"] == "skimage-retina"
    chelsea = next(r for r in rows if r.key == "skimage-chelsea")  # 451x300 → ceil(256 * 1.503) = 385
    assert chelsea.source.endswith("chelsea.png?w=385&fit=max&fm=png&q=100")
    assert chelsea.caption == "a photograph: chelsea" and chelsea.meta["ai_description"].startswith("chelsea")
    assert len(read_source(str(tsv), cfg, limit=5)) == 5


def _unsplash_table(path, ids, sep):
    df = pd.DataFrame({c: [""] * len(ids) for c in UNSPLASH_COLUMNS})
    df["photo_id"] = ids
    df["photo_image_url"] = [f"https://images.unsplash.com/photo-{i}" for i in range(len(ids))]
    df["photo_width"], df["photo_height"] = "6000", "4000"
    df.to_csv(path, sep=sep, index=False)


@pytest.mark.parametrize("sep", ["\t", ","])
def test_lite_140_photos_csv000_parts_are_an_unsplash_source(tmp_path, sep):
    """Lite 1.4.0 ships `photos.csv000` (fixed in 1.4.1): the folder and the file are Unsplash sources, whether
    the parts hold tabs (as the .tsv000 files do) or commas."""
    _unsplash_table(tmp_path / "photos.csv000", ["a1", "b2"], sep)
    _unsplash_table(tmp_path / "photos.csv001", ["c3"], sep)
    assert detect_kind(str(tmp_path)) == "unsplash" and detect_kind(str(tmp_path / "photos.csv000")) == "unsplash"
    rows = read_source(str(tmp_path), ShardConfig())
    assert [r.key for r in rows] == ["a1", "b2", "c3"] and (rows[2].width, rows[2].height) == (6000, 4000)
    assert rows[0].source == "https://images.unsplash.com/photo-0?w=1536&fit=max&fm=png&q=100"


def test_a_folder_of_table_parts_is_never_an_image_folder(tmp_path):
    _unsplash_table(tmp_path / "part-000.tsv", ["a1"], "\t")
    _unsplash_table(tmp_path / "keywords.csv000", ["a1"], ",")
    with pytest.raises(ValueError, match="folder of table files.*keywords.csv000.*part-000.tsv.*photos.tsv"):
        read_source(str(tmp_path), ShardConfig())


def test_unsplash_ids_are_kept_exactly(tmp_path):
    ids = ["-0aB_cD1eFg", "xYz_123abc_", "__lead-ing", "plain"]  # leading '-', trailing '_' occur in real ids
    _unsplash_table(tmp_path / "photos.tsv000", ids, "\t")
    rows = read_source(str(tmp_path), ShardConfig())
    assert [r.key for r in rows] == ids and [r.meta["photo_id"] for r in rows] == ids
    assert list(plan_shards(rows, 3)[0].keys) + list(plan_shards(rows, 3)[1].keys) == ids


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
    with pytest.raises(FileNotFoundError, match="no images"):
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

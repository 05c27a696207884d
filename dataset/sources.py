"""Source lists → rows → fixed-size shards.

Three kinds of source, detected from the path:
    unsplash   a `photos.tsv*` file or a folder holding them (Unsplash Lite/Full; `photo_id` is the key)
    table      a .csv/.tsv(.gz)/.parquet/.txt URL list with configurable url/caption/id columns
    folder     a local or s3:// folder of images (recursive; key = relative path without extension)

Rows keep the source order, `limit` keeps the first N, and row i goes to shard i // shard_size, so the same source
and shard size always give the same shards (the resume contract relies on it). Keys are dot-free (WebDataset splits
a member name at its first dot, webdataset#288) and unique within a build.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import fsspec

from dataset.config import ShardConfig

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
TABLE_EXTS = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet", ".txt", ".txt.gz")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")  # anything but these could split or escape a tar member name


@dataclass(frozen=True)
class SourceRow:
    source: str  # http(s) URL, local path or s3:// URL of the image
    key: str | None = None  # stable id from the source (sanitised later); None → `{shard:06d}{index:04d}`
    caption: str = ""
    meta: dict = field(default_factory=dict)  # extra source columns kept in `{key}.json` and the parquet
    origin: str = "url"  # "url": only http(s) is fetched; "file": a path from a folder source, read with fsspec


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: shard id and its rows, each with its final key (same order as the input)."""

    shard_id: int
    keys: tuple[str, ...]
    rows: tuple[SourceRow, ...]

    def __len__(self) -> int:
        return len(self.rows)


def sanitize_key(raw: str) -> str:
    """Dot-free, path-free key: runs of characters outside [A-Za-z0-9_-] become one '_'."""
    return _KEY_BAD.sub("_", str(raw)).strip("_")


def with_width(url: str, width: int) -> str:
    """Set the imgix `w` parameter of an Unsplash `photo_image_url` (`?w=` or `&w=` when a query exists)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "w"]
    query.append(("w", str(int(width))))
    return urlunsplit(parts._replace(query=urlencode(query)))


def unsplash_request_width(cfg: ShardConfig, photo_width: str, photo_height: str) -> int:
    """Width to ask imgix for so the short side is still ≥ image_size after its resize (no wasted megapixels)."""
    if cfg.unsplash_width > 0:
        return cfg.unsplash_width
    try:
        w, h = float(photo_width), float(photo_height)
    except (TypeError, ValueError):
        w = h = 0.0
    if w <= 0 or h <= 0:
        return 2 * cfg.image_size  # unknown aspect: enough for up to 2:1 landscapes
    needed = math.ceil(cfg.image_size * max(1.0, w / h))  # landscape: height = W / aspect must reach image_size
    return int(min(w, needed))


def detect_kind(source: str) -> str:
    fs, path = fsspec.core.url_to_fs(source)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if fs.isdir(path):
        return "unsplash" if fs.glob(f"{path.rstrip('/')}/photos.tsv*") else "folder"
    if name.startswith("photos.tsv") or (any(c in path for c in "*?[") and "photos.tsv" in name):
        return "unsplash"
    if name.lower().endswith(TABLE_EXTS):
        return "table"
    raise ValueError(f"source {source!r}: not a folder, a photos.tsv*, nor a table with extension {TABLE_EXTS}")


def _read_table(url: str):
    """A pandas DataFrame of strings (missing values are '') from csv/tsv(.gz)/parquet/txt."""
    import pandas as pd

    lower = url.lower()
    if lower.endswith(".parquet"):
        return pd.read_parquet(url).astype(str).replace({"None": "", "nan": ""})
    if lower.endswith((".txt", ".txt.gz")):
        with fsspec.open(url, "rt", compression="infer", encoding="utf-8") as f:
            return pd.DataFrame({"url": [line.strip() for line in f if line.strip()]})
    sep = "\t" if ".tsv" in lower else ","
    # default quoting, as the Unsplash loader (pd.read_csv(sep="\t")) and our writer (csv.DictWriter) use
    return pd.read_csv(url, sep=sep, dtype=str, keep_default_na=False, compression="infer")


def _unsplash_rows(source: str, cfg: ShardConfig, limit: int | None) -> list[SourceRow]:
    fs, path = fsspec.core.url_to_fs(source)
    pattern = f"{path.rstrip('/')}/photos.tsv*" if fs.isdir(path) else path
    files = sorted(fs.glob(pattern)) if any(c in pattern for c in "*?[") else [path]
    if not files:
        raise FileNotFoundError(f"source {source!r}: no photos.tsv* files")
    rows: list[SourceRow] = []
    for f in files:
        df = _read_table(fs.unstrip_protocol(f) if "://" in source else f)
        for col in ("photo_id", "photo_image_url"):
            if col not in df.columns:
                raise ValueError(f"{f}: Unsplash photos.tsv without column {col!r} (columns: {list(df.columns)})")
        for rec in df.to_dict("records"):
            width = unsplash_request_width(cfg, rec.get("photo_width", ""), rec.get("photo_height", ""))
            caption = rec.get("photo_description") or rec.get("ai_description") or ""
            meta = {k: rec.get(k, "") for k in ("photo_url", "photo_width", "photo_height", "photo_description",
                                                 "ai_description", "photographer_username")}
            rows.append(SourceRow(with_width(rec["photo_image_url"], width), rec["photo_id"], caption, meta))
            if limit is not None and len(rows) >= limit:
                return rows
    return rows


def _table_rows(source: str, limit: int | None, url_col: str, caption_col: str, id_col: str | None) -> list[SourceRow]:
    df = _read_table(source)
    if url_col not in df.columns:
        raise ValueError(f"{source}: no url column {url_col!r} (columns: {list(df.columns)}); pass url_col=")
    if id_col and id_col not in df.columns:
        raise ValueError(f"{source}: no id column {id_col!r} (columns: {list(df.columns)})")
    if limit is not None:
        df = df.head(limit)
    extra = [c for c in df.columns if c not in (url_col, caption_col, id_col)]
    rows = []
    for rec in df.to_dict("records"):
        rows.append(SourceRow(rec[url_col], rec[id_col] if id_col else None, rec.get(caption_col, "") or "",
                              {c: rec[c] for c in extra}))
    return rows


def _folder_rows(source: str, limit: int | None) -> list[SourceRow]:
    fs, path = fsspec.core.url_to_fs(source)
    base = path.rstrip("/")
    files = sorted(p for p in fs.find(base) if p.lower().endswith(IMAGE_EXTS))
    if limit is not None:
        files = files[:limit]
    rows = []
    for p in files:
        rel = p[len(base) + 1:]
        rows.append(SourceRow(fs.unstrip_protocol(p) if "://" in source else p, rel.rsplit(".", 1)[0], "",
                              {"relative_path": rel}, origin="file"))
    return rows


def read_source(source: str, cfg: ShardConfig, limit: int | None = None, url_col: str = "url",
                caption_col: str = "caption", id_col: str | None = None) -> list[SourceRow]:
    """All rows of `source` in source order (the first `limit` only).

    Raises:
        ValueError: unknown source kind or a missing column (names the file and the columns it has).
        FileNotFoundError: a folder without images or an Unsplash glob matching nothing.
    """
    kind = detect_kind(source)
    if kind == "unsplash":
        rows = _unsplash_rows(source, cfg, limit)
    elif kind == "table":
        rows = _table_rows(source, limit, url_col, caption_col, id_col)
    else:
        rows = _folder_rows(source, limit)
    if not rows:
        raise FileNotFoundError(f"source {source!r} ({kind}) has no rows")
    return rows


def plan_shards(rows: list[SourceRow], shard_size: int) -> list[ShardSpec]:
    """Split rows into consecutive shards of `shard_size` and give every row its final, unique, dot-free key.

    Keys come from the source id when there is one, else `{shard:06d}{index:04d}` (docs/DESIGN.md §3); a repeated id gets
    `_{row number}` appended so two rows never share a tar member name.
    """
    width = max(4, len(str(shard_size - 1)))
    seen: set[str] = set()
    keys: list[str] = []
    for i, row in enumerate(rows):
        shard, index = divmod(i, shard_size)
        key = sanitize_key(row.key) if row.key else ""
        if not key:
            key = f"{shard:06d}{index:0{width}d}"
        while key in seen:
            key = f"{key}_{i}"
        seen.add(key)
        keys.append(key)
    return [ShardSpec(s, tuple(keys[i:i + shard_size]), tuple(rows[i:i + shard_size]))
            for s, i in enumerate(range(0, len(rows), shard_size))]

"""Source lists → rows → fixed-size shards.

Three kinds of source, detected from the path:
    unsplash   a `photos.tsv*` / `photos.csv*` file or a folder holding them (Unsplash Lite/Full; Lite 1.4.0 names
               its parts `photos.csv000`; `photo_id` is the key, kept exactly)
    table      a .csv/.tsv(.gz)/.parquet/.txt URL list with configurable url/caption/id columns
    folder     a local or s3:// folder of images (recursive; key = relative path without extension)

Rows keep the source order, `limit` keeps the first N, and row i goes to shard i // shard_size, so the same source
and shard size always give the same shards (the resume contract relies on it). Keys are dot-free (WebDataset splits
a member name at its first dot, webdataset#288) and unique within a build.

Unsplash image URLs are imgix URLs: every request asks for `fit=max` (imgix's default `fit=clip` enlarges a photo
smaller than `w`) and the configured lossless/high-quality output (`fm`, `q`; imgix's default is a q=75 re-encode).
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
_KEY_OK = re.compile(r"[A-Za-z0-9_-]+")  # Unsplash ids use exactly this alphabet (leading '-', trailing '_' too)
UNSPLASH_GLOBS = ("photos.tsv*", "photos.csv*")  # Lite/Full parts: photos.tsv000…, Lite 1.4.0: photos.csv000
# imgix parameters we set, plus those that would change the delivered size or quality behind our back
_IMGIX_OWNED = frozenset({"w", "h", "fit", "fm", "q", "auto", "dpr"})


@dataclass(frozen=True)
class SourceRow:
    source: str  # http(s) URL, local path or s3:// URL of the image
    key: str | None = None  # stable id from the source (sanitised later); None → `{shard:06d}{index:04d}`
    caption: str = ""
    meta: dict = field(default_factory=dict)  # extra source columns kept in `{key}.json` and the parquet
    origin: str = "url"  # "url": only http(s) is fetched; "file": a path from a folder source, read with fsspec
    width: int | None = None  # the photo's own size as the source declares it (Unsplash photo_width), else None
    height: int | None = None


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: shard id and its rows, each with its final key (same order as the input)."""

    shard_id: int
    keys: tuple[str, ...]
    rows: tuple[SourceRow, ...]

    def __len__(self) -> int:
        return len(self.rows)


def sanitize_key(raw: str) -> str:
    """Dot-free, path-free key. A key already made of [A-Za-z0-9_-] only (every Unsplash id) is kept exactly;
    otherwise runs of other characters become one '_' and '_' is trimmed from both ends."""
    raw = str(raw)
    if _KEY_OK.fullmatch(raw):
        return raw
    return _KEY_BAD.sub("_", raw).strip("_")


def imgix_url(url: str, width: int, fmt: str, quality: int) -> str:
    """An Unsplash `photo_image_url` with our imgix rendering: `w`, `fit=max` (never enlarge), `fm`, `q`.

    Parameters of the URL that could change the delivered size or quality (h, dpr, auto=compress/format, an
    earlier w/fit/fm/q) are dropped; the others (ixid, ixlib, …) are kept in order.
    """
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _IMGIX_OWNED]
    query += [("w", str(int(width))), ("fit", "max"), ("fm", fmt), ("q", str(int(quality)))]
    return urlunsplit(parts._replace(query=urlencode(query)))


def declared_size(width, height) -> tuple[int | None, int | None]:
    """(width, height) from the source's columns as positive ints, or (None, None) when either is missing/invalid."""
    try:
        w, h = int(float(width)), int(float(height))
    except (TypeError, ValueError):
        return None, None
    return (w, h) if w > 0 and h > 0 else (None, None)


def unsplash_request_width(cfg: ShardConfig, photo_width, photo_height) -> int:
    """Width to ask imgix for so the short side is still ≥ image_size after its resize (no wasted megapixels)."""
    if cfg.unsplash_width > 0:
        return cfg.unsplash_width
    w, h = declared_size(photo_width, photo_height)
    if w is None:
        return 2 * cfg.image_size  # unknown aspect: enough for up to 2:1 landscapes (fit=max: never enlarged)
    needed = math.ceil(cfg.image_size * max(1.0, w / h))  # landscape: height = W / aspect must reach image_size
    return int(min(w, needed))


def _unsplash_parts(fs, path: str) -> list[str]:
    """The `photos.tsv*` / `photos.csv*` files directly inside folder `path`, sorted."""
    return sorted({p for g in UNSPLASH_GLOBS for p in fs.glob(f"{path.rstrip('/')}/{g}")})


def _is_unsplash_name(name: str) -> bool:
    return name.startswith(("photos.tsv", "photos.csv"))


def _no_images_error(source: str, names: list[str]) -> Exception:
    """The error for a folder without images: one of table files (csv/tsv parts) is a mistaken source."""
    tables = sorted(n for n in names if n.lower().endswith(TABLE_EXTS) or re.search(r"\.(csv|tsv)\d+$", n.lower()))
    if tables:
        return ValueError(f"source {source!r}: a folder of table files {tables[:5]}, not of images; pass one of the "
                          f"files (Unsplash parts must be named photos.tsv*/photos.csv*)")
    return FileNotFoundError(f"source {source!r} (folder) has no images with extension {IMAGE_EXTS}")


def detect_kind(source: str) -> str:
    fs, path = fsspec.core.url_to_fs(source)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if fs.isdir(path):
        return "unsplash" if _unsplash_parts(fs, path) else "folder"
    if _is_unsplash_name(name):
        return "unsplash"
    if name.lower().endswith(TABLE_EXTS):
        return "table"
    raise ValueError(f"source {source!r}: not a folder, a photos.tsv*/photos.csv*, nor a table with extension "
                     f"{TABLE_EXTS}")


def _sniff_sep(url: str) -> str:
    """Tab or comma, from the header line (Lite 1.4.0's `photos.csv000` parts are named .csv)."""
    with fsspec.open(url, "rt", compression="infer", encoding="utf-8") as f:
        return "\t" if "\t" in f.readline() else ","


def _read_table(url: str, sep: str | None = None):
    """A pandas DataFrame of strings (missing values are '') from csv/tsv(.gz)/parquet/txt; `sep` overrides the
    separator the extension implies."""
    import pandas as pd

    lower = url.lower()
    if lower.endswith(".parquet"):
        return pd.read_parquet(url).astype(str).replace({"None": "", "nan": ""})
    if lower.endswith((".txt", ".txt.gz")):
        with fsspec.open(url, "rt", compression="infer", encoding="utf-8") as f:
            return pd.DataFrame({"url": [line.strip() for line in f if line.strip()]})
    sep = sep or ("\t" if ".tsv" in lower else ",")
    # default quoting, as the Unsplash loader (pd.read_csv(sep="\t")) and our writer (csv.DictWriter) use
    return pd.read_csv(url, sep=sep, dtype=str, keep_default_na=False, compression="infer")


def _unsplash_row(rec: dict, cfg: ShardConfig) -> SourceRow:
    """One Unsplash photos row → a SourceRow asking imgix for a never-enlarged, full-quality rendering."""
    w, h = declared_size(rec.get("photo_width"), rec.get("photo_height"))
    url = imgix_url(rec["photo_image_url"], unsplash_request_width(cfg, w, h), cfg.unsplash_format,
                    cfg.unsplash_quality)
    caption = rec.get("photo_description") or rec.get("ai_description") or ""
    meta = {k: rec.get(k, "") for k in ("photo_id", "photo_url", "photo_width", "photo_height", "photo_description",
                                         "ai_description", "photographer_username")}
    return SourceRow(url, rec["photo_id"], caption, meta, width=w, height=h)


def _unsplash_rows(source: str, cfg: ShardConfig, limit: int | None) -> list[SourceRow]:
    fs, path = fsspec.core.url_to_fs(source)
    if fs.isdir(path):
        files = _unsplash_parts(fs, path)
    else:
        files = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path]
    if not files:
        raise FileNotFoundError(f"source {source!r}: no photos.tsv*/photos.csv* files")
    rows: list[SourceRow] = []
    for f in files:
        url = fs.unstrip_protocol(f) if "://" in source else f
        df = _read_table(url, sep=_sniff_sep(url))
        for col in ("photo_id", "photo_image_url"):
            if col not in df.columns:
                raise ValueError(f"{f}: Unsplash photos table without column {col!r} (columns: {list(df.columns)})")
        for rec in df.to_dict("records"):
            rows.append(_unsplash_row(rec, cfg))
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
    found = fs.find(base)
    files = sorted(p for p in found if p.lower().endswith(IMAGE_EXTS))
    if not files:
        raise _no_images_error(source, [p.rsplit("/", 1)[-1] for p in found])
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

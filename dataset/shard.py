"""The per-shard callable of the shard stage (STYLE G8): `ShardBuilder(cfg, root)(spec) -> ShardResult`, never raises.

Writes, per docs/DESIGN.md §3 and in this order (each under a temporary name, then renamed):
    {root}/hr/{shard:06d}.tar            {key}.jpg (image_size² RGB, JPEG q95) + {key}.json (source metadata)
    {root}/hr/{shard:06d}.parquet        one row per input row (PARQUET_SCHEMA): key, source, status, error, sizes…
    {root}/hr/{shard:06d}_stats.json     LAST: counts by status, error histogram, bytes, durations, config hash

Resume: a shard with `_stats.json` is skipped; anything else (a kill at any moment) is rebuilt from scratch, and
leftover temporary files are removed first. `retry_failed=True` re-attempts only the rows whose status is a
failure, copying the successful samples from the existing tar in order. Exact duplicates (sha256 of the
downloaded bytes) are dropped within the shard here and across shards by `dataset.dedup`.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import traceback
import uuid
from dataclasses import replace

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from dataset import contract
from dataset.config import ShardConfig, config_hash
from dataset.download import Fetcher, imap_ordered
from dataset.images import ImageRejected, normalise, too_small
from dataset.sources import ShardSpec
from dataset.stage import ShardResult

SUCCESS, FAILED_DOWNLOAD, FAILED_PROCESS, DUPLICATE = "success", "failed_to_download", "failed_to_process", "duplicate"
FAILED = (FAILED_DOWNLOAD, FAILED_PROCESS)

PARQUET_SCHEMA = pa.schema([
    ("key", pa.string()),  # tar member key (dot-free)
    ("photo_id", pa.string()),  # the source's own id, exactly (Unsplash photo_id); null when the source has none
    ("index", pa.int32()),  # row position in the shard
    ("source", pa.string()),  # URL or path it came from
    ("caption", pa.string()),  # caption column of the source ('' if none)
    ("status", pa.string()),  # success | failed_to_download | failed_to_process | duplicate
    ("error", pa.string()),  # reason code (http_404, timeout, too_small, decode_error, …); null on success
    ("error_detail", pa.string()),
    ("http_status", pa.int32()),
    ("attempts", pa.int32()),
    ("download_s", pa.float32()),
    ("original_bytes", pa.int64()),
    ("original_format", pa.string()),
    ("original_width", pa.int32()),  # the photo's own size: the source row's (Unsplash photo_width) when it has
    ("original_height", pa.int32()),  # one, else the decoded image's (after EXIF orientation)
    ("delivered_width", pa.int32()),  # the image as the server delivered it (a CDN-resized one for Unsplash)
    ("delivered_height", pa.int32()),
    ("original_mode", pa.string()),  # Pillow mode before RGB conversion (CMYK, P, I;16, RGBA…)
    ("sha256", pa.string()),  # of the downloaded bytes (the duplicate test)
    ("width", pa.int32()),  # written image (image_size) or null
    ("height", pa.int32()),
    ("jpeg_bytes", pa.int64()),
    ("duplicate_of", pa.string()),  # key of the kept copy
    ("meta", pa.string()),  # JSON of the extra source columns
])


class _HashingWriter:
    """A write-only file wrapper that counts bytes and hashes them (the tar's sha256 lands in `_stats.json`)."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def remove_temporaries(root: str, shard: int) -> None:
    """Delete `{shard:06d}*.tmp-*` leftovers of a killed writer."""
    fs, path = fsspec.core.url_to_fs(contract.join(root, "hr"))
    for p in fs.glob(f"{path}/{contract.shard_name(shard)}*.tmp-*"):
        fs.rm(p)


def write_tar(url: str, samples) -> tuple[int, str, int]:
    """Stream `(key, {ext: bytes})` samples into `url` through webdataset's TarWriter, via a temp name and a rename.

    Returns (bytes, sha256 hex, samples written).
    """
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    n = 0
    with fs.open(tmp, "wb") as f:
        sink = _HashingWriter(f)
        with wds.TarWriter(sink, encoder=False, mtime=0, mode=0o644, user="nsarm", group="nsarm") as tw:
            for key, files in samples:
                tw.write({"__key__": key, **files})
                n += 1
    fs.mv(tmp, path)
    return sink.size, sink.sha.hexdigest(), n


def write_parquet(url: str, records: list[dict]) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=PARQUET_SCHEMA), buf)
    contract.put_atomic(url, buf.getvalue())


def read_parquet(url: str) -> list[dict]:
    return contract.read_parquet(url).to_pylist()


def shard_stats(shard: int, records: list[dict], cfg: ShardConfig, tar_bytes: int, tar_sha: str, n: int,
                t0: float, started: float, retried: int | None = None, cpu_s: float | None = None) -> dict:
    """The `_stats.json` body (img2dataset's fields plus our error histogram and content hashes)."""
    status_counts: dict[str, int] = {}
    error_counts: dict[str, int] = {}
    for r in records:
        status_counts[r["status"]] = status_counts.get(r["status"], 0) + 1
        if r["error"]:
            error_counts[r["error"]] = error_counts.get(r["error"], 0) + 1
    wall = time.monotonic() - t0
    return {
        "shard": shard, "count": len(records), "successes": status_counts.get(SUCCESS, 0), "samples_in_tar": n,
        "failed_to_download": status_counts.get(FAILED_DOWNLOAD, 0),
        "failed_to_process": status_counts.get(FAILED_PROCESS, 0), "duplicates": status_counts.get(DUPLICATE, 0),
        "status_counts": status_counts, "error_counts": dict(sorted(error_counts.items(), key=lambda kv: -kv[1])),
        "tar_bytes": tar_bytes, "tar_sha256": tar_sha,
        "download_s": round(sum(r["download_s"] or 0.0 for r in records), 3), "wall_s": round(wall, 3),
        "cpu_s": None if cpu_s is None else round(cpu_s, 3),  # process CPU time: load-independent cost
        "images_per_s": round(n / wall, 2) if wall > 0 else None,
        "start_time": started, "end_time": time.time(), "config_hash": config_hash(cfg),
        "image_size": cfg.image_size, "retried_rows": retried,
    }


def done_result(shard: int, stats: dict, skipped: bool = True) -> ShardResult:
    """The result of a done shard, from its `_stats.json` body: the tar's samples, and the rows left out of it."""
    n = stats["samples_in_tar"]
    return ShardResult(True, shard, n, n_bad=stats["count"] - n, skipped=skipped,
                       seconds=0.0 if skipped else stats["wall_s"], stats=stats)


class ShardBuilder:
    """Build one HR shard. `__call__` never raises: failures come back as `ShardResult(ok=False, err=…)`."""

    def __init__(self, cfg: ShardConfig, root: str, retry_failed: bool = False):
        self.cfg, self.root, self.retry_failed = cfg, root.rstrip("/"), retry_failed
        self.fetcher = Fetcher(cfg)
        # A row that declares its size passed min_side on that size; what the CDN delivers was resized to a short
        # side of image_size, so it is held to that (a min_side above image_size would reject every such row).
        self._cdn_cfg = replace(cfg, min_side=min(cfg.min_side, cfg.image_size))

    def __call__(self, spec: ShardSpec) -> ShardResult:
        try:
            return self._build(spec)
        except Exception as e:  # G8: one broken shard must not take down the pool; the caller records it
            return ShardResult(False, spec.shard_id, err=f"{type(e).__name__}: {e}\n{traceback.format_exc()}")

    # -- one row: fetch + normalise (runs in the thread pool)
    def _process(self, item: tuple[int, ShardSpec]) -> tuple[dict, bytes | None]:
        i, spec = item
        row, rec = spec.rows[i], self._base_record(i, spec)
        declared = (row.width, row.height) if row.width and row.height else None
        if declared and (reason := too_small(*declared, self.cfg)):  # known from the row: no request at all
            rec.update(status=FAILED_PROCESS, error="too_small", error_detail=f"source row: {reason}", attempts=0,
                       original_width=row.width, original_height=row.height)
            return rec, None
        got = self.fetcher(row.source, row.origin)
        rec.update(http_status=got.http_status, attempts=got.attempts, download_s=round(got.seconds, 4))
        if got.error:
            rec.update(status=FAILED_DOWNLOAD, error=got.error, error_detail=got.detail)
            return rec, None
        rec.update(original_bytes=len(got.data), sha256=hashlib.sha256(got.data).hexdigest())
        try:
            jpeg, info = normalise(got.data, self._cdn_cfg if declared else self.cfg, declared)
        except ImageRejected as r:
            rec.update(status=FAILED_PROCESS, error=r.reason, error_detail=r.detail[:500])
            return rec, None
        except Exception as e:  # a decoder bug on one image must not fail the shard
            rec.update(status=FAILED_PROCESS, error="process_error", error_detail=f"{type(e).__name__}: {e}"[:500])
            return rec, None
        orig_w, orig_h = declared or (info.width, info.height)
        rec.update(status=SUCCESS, original_format=info.format, original_width=orig_w, original_height=orig_h,
                   delivered_width=info.width, delivered_height=info.height, original_mode=info.mode,
                   width=self.cfg.image_size, height=self.cfg.image_size, jpeg_bytes=len(jpeg))
        return rec, jpeg

    def _watchdog_s(self) -> float:
        """Longest a row may legitimately take: every attempt to its deadline, the backoffs, then decoding."""
        c = self.cfg
        return (c.retries + 1) * c.total_timeout + c.backoff * (2 ** c.retries) + 30.0

    def _timed_out(self, item: tuple[int, ShardSpec]) -> tuple[dict, None]:
        rec = self._base_record(*item)
        rec.update(status=FAILED_DOWNLOAD, error="timeout",
                   error_detail=f"watchdog: no result after {self._watchdog_s():.0f}s")
        return rec, None

    @staticmethod
    def _base_record(i: int, spec: ShardSpec) -> dict:
        row = spec.rows[i]
        rec = {f.name: None for f in PARQUET_SCHEMA}
        rec.update(key=spec.keys[i], photo_id=row.meta.get("photo_id") or None, index=i, source=row.source,
                   caption=row.caption or "", meta=json.dumps(row.meta, default=str, sort_keys=True))
        return rec

    def _sample_json(self, rec: dict, row) -> bytes:
        keep = ("key", "photo_id", "source", "caption", "original_width", "original_height", "delivered_width",
                "delivered_height", "original_format", "original_mode", "sha256", "width", "height")
        return json.dumps({**{k: rec[k] for k in keep}, "meta": row.meta}, default=str, sort_keys=True).encode()

    def _build(self, spec: ShardSpec) -> ShardResult:
        sid, root = spec.shard_id, self.root
        t0, started, cpu0 = time.monotonic(), time.time(), time.process_time()
        old: list[dict] | None = None
        if contract.exists(contract.hr_stats(root, sid)):
            done = contract.read_json(contract.hr_stats(root, sid))
            if not self.retry_failed:
                return done_result(sid, done)
            old = read_parquet(contract.hr_parquet(root, sid))
            if len(old) != len(spec) or [r["key"] for r in old] != list(spec.keys):
                raise ValueError(f"shard {sid}: existing parquet rows do not match the source rows; "
                                 "the source or shard_size changed since it was built")
            if not any(r["status"] in FAILED for r in old):
                return done_result(sid, done)
            # Un-mark the shard first: a kill between the tar rename and the new stats then means "rebuild from
            # scratch" on the next run, never a tar that disagrees with its parquet.
            contract.remove(contract.hr_stats(root, sid))
        remove_temporaries(root, sid)
        todo = [i for i in range(len(spec)) if old is None or old[i]["status"] in FAILED]
        results = imap_ordered(self._process, ((i, spec) for i in todo), self.cfg.threads,
                               timeout=self._watchdog_s(), on_timeout=self._timed_out)
        old_tar = contract.iter_tar_samples(contract.hr_tar(root, sid)) if old is not None else None
        records: list[dict] = []

        def samples():
            seen: dict[str, str] = {}  # sha256 → kept key: first occurrence in input order wins
            todo_set = set(todo)
            for i in range(len(spec)):
                if i in todo_set:
                    rec, jpeg = next(results)
                    if jpeg is not None and self.cfg.dedup and rec["sha256"] in seen:
                        rec.update(status=DUPLICATE, error="duplicate", duplicate_of=seen[rec["sha256"]], width=None,
                                   height=None, jpeg_bytes=None)
                        jpeg = None
                    files = {"jpg": jpeg, "json": self._sample_json(rec, spec.rows[i])} if jpeg else None
                else:  # retry_failed: an earlier success (copied from the old tar) or duplicate (kept as is)
                    rec, files = old[i], None
                    if rec["status"] == SUCCESS:
                        key, files, err = next(old_tar)
                        if err or key != rec["key"]:
                            raise ValueError(f"shard {sid}: old tar member {key!r} out of step with the parquet")
                if rec["status"] == SUCCESS and rec["sha256"]:
                    seen.setdefault(rec["sha256"], rec["key"])
                records.append(rec)
                if files:
                    yield rec["key"], files

        nbytes, sha, n = write_tar(contract.hr_tar(root, sid), samples())
        write_parquet(contract.hr_parquet(root, sid), records)
        stats = shard_stats(sid, records, self.cfg, nbytes, sha, n, t0, started,
                            retried=len(todo) if old is not None else None, cpu_s=time.process_time() - cpu0)
        contract.write_json_atomic(contract.hr_stats(root, sid), stats)  # last: marks the shard done
        return done_result(sid, stats, skipped=False)

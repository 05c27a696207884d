"""Exact-duplicate removal across the shards of one build (within a shard, `ShardBuilder` already drops them).

Shards are built in parallel, so a photo reachable under two URLs can land in two shards. After all shards are
done, this pass reads every parquet (key, status, sha256 only), keeps the first copy in (shard, index) order and
rewrites the shards holding later copies: the shard's `_stats.json` is removed first, then the tar (minus the
duplicates), the parquet (status `duplicate`, `duplicate_of`) and the stats are rewritten. A kill part-way leaves
the shard un-marked, so the next run rebuilds it and reruns this pass: idempotent, never inconsistent.
"""

from __future__ import annotations

import time

from dataset import contract
from dataset.config import ShardConfig
from dataset.shard import DUPLICATE, SUCCESS, read_parquet, shard_stats, write_parquet, write_tar


def _hash_columns(root: str, shard: int) -> list[dict]:
    return contract.read_parquet(contract.hr_parquet(root, shard), columns=["key", "status", "sha256"]).to_pylist()


def find_cross_shard_duplicates(root: str) -> dict[int, dict[str, str]]:
    """{shard: {duplicate key: kept key}} over all done shards of `root`, first copy in shard order kept."""
    first: dict[str, str] = {}
    dups: dict[int, dict[str, str]] = {}
    for shard in contract.list_shards(root, "hr"):
        for r in _hash_columns(root, shard):
            if r["status"] != SUCCESS or not r["sha256"]:
                continue
            kept = first.setdefault(r["sha256"], r["key"])
            if kept != r["key"]:
                dups.setdefault(shard, {})[r["key"]] = kept
    return dups


def remove_duplicates(root: str, cfg: ShardConfig) -> dict[str, int]:
    """Rewrite every shard that holds a later copy of an image kept elsewhere. Returns counts for the summary."""
    dups = find_cross_shard_duplicates(root)
    for shard, keys in sorted(dups.items()):
        t0, started = time.monotonic(), time.time()
        old_stats = contract.read_json(contract.hr_stats(root, shard))
        records = read_parquet(contract.hr_parquet(root, shard))
        contract.remove(contract.hr_stats(root, shard))  # un-mark first (see module docstring)
        for r in records:
            if r["key"] in keys:
                r.update(status=DUPLICATE, error="duplicate", duplicate_of=keys[r["key"]], width=None, height=None,
                         jpeg_bytes=None)
        kept = ((k, files) for k, files, err in contract.iter_tar_samples(contract.hr_tar(root, shard))
                if err is None and k not in keys)
        nbytes, sha, n = write_tar(contract.hr_tar(root, shard), kept)
        write_parquet(contract.hr_parquet(root, shard), records)
        stats = shard_stats(shard, records, cfg, nbytes, sha, n, t0, started, old_stats.get("retried_rows"))
        stats["start_time"] = old_stats.get("start_time", started)
        contract.write_json_atomic(contract.hr_stats(root, shard), stats)
    return {"shards_rewritten": len(dups), "duplicates_removed": sum(len(k) for k in dups.values())}

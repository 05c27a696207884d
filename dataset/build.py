"""`build_shards`: the shard stage end to end — read the source, plan shards, build them (Ray or in-process),
remove cross-shard duplicates, summarise. The Prefect flow and `nsarm shard` both call this.

    from dataset.build import build_shards
    summary = build_shards("photos.tsv", "s3://bucket/ds", PRESETS["tiny"], limit=100)

Rerunning the same call is the recovery path: done shards are skipped, partial ones rebuilt (docs/DESIGN.md §3).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from dataset import contract
from dataset.config import ShardConfig, config_hash
from dataset.shard import ShardBuilder, done_result
from dataset.sources import plan_shards, read_source
from dataset.stage import ProgressReporter, ShardResult, run_in_process, summarize


def _check_config(root: str, cfg: ShardConfig) -> None:
    """Write `{root}/hr/config.json` once; a later build with different content settings is refused."""
    url = contract.join(root, "hr", "config.json")
    if contract.exists(url):
        saved = contract.read_json(url)
        if saved.get("config_hash") != config_hash(cfg):
            raise ValueError(
                f"{url} was built with config {saved.get('config_hash')} but this run has {config_hash(cfg)} "
                f"(saved: {saved.get('config')}); use a new root or the same settings")
        return
    contract.write_json_atomic(url, {"config_hash": config_hash(cfg), "config": cfg.to_dict()})


def print_progress() -> Callable[[ShardResult, int, int], None]:
    """The shard stage's progress lines, printed to stderr (`nsarm shard`; a flow run logs its prints)."""
    return ProgressReporter("shard", "images", lambda line: print(line, file=sys.stderr, flush=True), time.monotonic)


# `_stats.json` keys summed over the done shards into the summary's totals
TOTALS = ("count", "successes", "failed_to_download", "failed_to_process", "duplicates", "tar_bytes", "cpu_s",
          "error_counts")


def summarize_build(root: str, results: list[ShardResult], wall_s: float, cfg: ShardConfig, n_rows: int,
                    dedup: dict) -> dict:
    """The stage summary, with each done shard's stats read back from its `_stats.json` (the source of truth: the
    cross-shard dedup pass may have rewritten it since the shard was built)."""
    done_ids = set(contract.list_shards(root, "hr"))
    fresh = [done_result(r.shard_id, contract.read_json(contract.hr_stats(root, r.shard_id)), r.skipped)
             if r.ok and r.shard_id in done_ids else r for r in results]
    return summarize("shard", root, "hr", config_hash(cfg), fresh, wall_s, TOTALS, rows=n_rows,
                     cross_shard_dedup=dedup)


def build_shards(source: str, root: str, cfg: ShardConfig, limit: int | None = None, ray_address: str | None = None,
                 *, use_ray: bool = True, retry_failed: bool = False, url_col: str = "url",
                 caption_col: str = "caption", id_col: str | None = None, shards: list[int] | None = None,
                 progress: Callable[[ShardResult, int, int], None] | None = None) -> dict:
    """Build (or resume) the HR shards of `source` under `root`.

    Args:
        source: Unsplash `photos.tsv*` (file, glob or folder), a csv/tsv/parquet/txt URL list, or an image folder
            (local or s3://).
        root: dataset root (local path or s3://); shards go to `{root}/hr/`.
        cfg: the stage config (`dataset.config.PRESETS`).
        limit: keep only the first N source rows.
        ray_address: Ray cluster to use (else `$RAY_ADDRESS`, else a local one); ignored with `use_ray=False`.
        use_ray: False runs the shards one after another in this process (debugging, `nsarm shard`).
        retry_failed: re-attempt only the failed rows of done shards.
        url_col, caption_col, id_col: column names for table sources.
        shards: build only these shard ids (debugging).
    Returns:
        `StageSummary.to_dict()` (dataset/stage.py): samples = images in the done shards' tars; totals = count,
        successes, failed_to_download, failed_to_process, duplicates, tar_bytes, cpu_s, error_counts; extra =
        rows, cross_shard_dedup.
    """
    t0 = time.monotonic()
    rows = read_source(source, cfg, limit=limit, url_col=url_col, caption_col=caption_col, id_col=id_col)
    specs = plan_shards(rows, cfg.shard_size)
    if shards is not None:
        specs = [s for s in specs if s.shard_id in set(shards)]
    _check_config(root, cfg)
    contract.write_json_atomic(contract.join(root, "hr", "source.json"), {
        "source": source, "limit": limit, "rows": len(rows), "shards": len(plan_shards(rows, cfg.shard_size)),
        "shard_size": cfg.shard_size, "url_col": url_col, "caption_col": caption_col, "id_col": id_col})
    progress = progress or print_progress()
    if use_ray:
        from dataset.distributed import run_shards

        results = run_shards(specs, cfg, root, retry_failed, ray_address, progress)
    else:
        results = run_in_process(specs, ShardBuilder(cfg, root, retry_failed), progress=progress)
    results.sort(key=lambda r: r.shard_id)
    dedup = {"shards_rewritten": 0, "duplicates_removed": 0}
    if cfg.dedup and all(r.ok for r in results):
        from dataset.dedup import remove_duplicates

        dedup = remove_duplicates(root, cfg)
    return summarize_build(root, results, time.monotonic() - t0, cfg, len(rows), dedup)

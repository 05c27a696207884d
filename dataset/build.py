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
from dataset.progress import progress_line
from dataset.shard import ShardBuilder, ShardResult
from dataset.sources import plan_shards, read_source


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


def print_progress(started: float) -> Callable[[ShardResult, int, int], None]:
    images = [0]

    def report(res: ShardResult, done: int, total: int) -> None:
        images[0] += 0 if res.skipped else res.n
        elapsed = time.monotonic() - started
        state = "skipped" if res.skipped else ("ok" if res.ok else "FAILED")
        print(progress_line("shard", done, total, "shards", elapsed, rate=images[0] / max(elapsed, 1e-6),
                            rate_unit="images/s", detail=f"shard {res.shard_id:06d} {state}, {res.n} images"),
              file=sys.stderr, flush=True)
        if not res.ok:
            print(f"[shard] shard {res.shard_id:06d} error: {(res.err or '').splitlines()[0]}", file=sys.stderr)

    return report


def summarize(root: str, results: list[ShardResult], wall_s: float, cfg: ShardConfig, n_rows: int) -> dict:
    """Totals over the shards of this build, read back from their `_stats.json` (the source of truth)."""
    totals = {"successes": 0, "failed_to_download": 0, "failed_to_process": 0, "duplicates": 0, "count": 0,
              "tar_bytes": 0, "cpu_s": 0.0}
    errors: dict[str, int] = {}
    done_ids = set(contract.list_shards(root, "hr"))
    for res in results:
        if res.ok and res.shard_id in done_ids:
            stats = contract.read_json(contract.hr_stats(root, res.shard_id))
            for k in totals:
                totals[k] += stats.get(k) or 0
            for k, v in stats.get("error_counts", {}).items():
                errors[k] = errors.get(k, 0) + v
    new_images = sum(r.n for r in results if r.ok and not r.skipped)
    return {
        "root": root, "config_hash": config_hash(cfg), "rows": n_rows, "shards_total": len(results),
        "shards_done": sum(r.ok for r in results), "shards_skipped": sum(r.skipped for r in results),
        "shards_failed": sorted(r.shard_id for r in results if not r.ok),
        "shard_errors": {r.shard_id: (r.err or "").splitlines()[0] for r in results if not r.ok},
        **totals, "error_counts": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "new_images": new_images, "wall_s": round(wall_s, 3),
        "images_per_s": round(new_images / wall_s, 2) if wall_s > 0 else None,
    }


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
        summary dict: shards_total/done/skipped/failed, successes, failed_to_download, failed_to_process,
        duplicates, error_counts, new_images, wall_s, images_per_s, cross-shard dedup counts.
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
    progress = progress or print_progress(time.monotonic())
    if use_ray:
        from dataset.distributed import run_shards

        results = run_shards(specs, cfg, root, retry_failed, ray_address, progress)
    else:
        builder, results = ShardBuilder(cfg, root, retry_failed), []
        for spec in specs:
            results.append(builder(spec))
            progress(results[-1], len(results), len(specs))
    results.sort(key=lambda r: r.shard_id)
    dedup = {"shards_rewritten": 0, "duplicates_removed": 0}
    if cfg.dedup and all(r.ok for r in results):
        from dataset.dedup import remove_duplicates

        dedup = remove_duplicates(root, cfg)
    summary = summarize(root, results, time.monotonic() - t0, cfg, len(rows))
    return {**summary, "cross_shard_dedup": dedup}

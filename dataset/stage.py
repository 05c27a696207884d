"""The shape every shard stage shares (shard, degrade, caption): one per-shard result, one run summary, one progress
reporter. Pure (no Ray, no I/O beyond the `emit` a caller passes), so degradation/ and captioning/ import it as they
import `dataset.contract`.

    worker(shard) -> ShardResult                     # STYLE G8: never raises; ok=False carries the error
    results = distribute(ids, slots, retries=2)      # dataset/distributed.py: Ray, bounded in flight, retried
    summary = summarize("degrade", root, "lr/<hash>", "<hash>", results, seconds, totals=("n_input", "errors"))

A summary is `StageSummary.to_dict()`: the same keys for the three stages (what `nsarm shard|degrade|caption` print,
what the build-dataset flow renders and stores in manifest.json under `extra.build`); stage-specific sums live in
`totals`, stage-specific run facts in `extra`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields

from dataset.progress import progress_line


@dataclass(frozen=True)
class ShardResult:
    """What a stage's per-shard callable returns (never raises): success with counts, or failure with the reason."""

    ok: bool
    shard_id: int
    n: int = 0  # samples in the shard's output: written now, or found there when skipped
    n_bad: int = 0  # input samples left out of the output; each one's reason is in the shard's stats
    err: str | None = None  # why the shard failed ("Type: message", maybe a traceback); None when ok
    skipped: bool = False  # done by an earlier run (its `_stats.json` exists and is current)
    seconds: float = 0.0
    stats: dict | None = None  # the shard's `_stats.json` body; None when the shard failed

    def brief(self) -> dict:
        """The result without its stats body (one JSON line per shard in the CLIs)."""
        return {k: v for k, v in asdict(self).items() if k != "stats"}


@dataclass(frozen=True)
class StageSummary:
    """One run of a shard stage over a dataset root. The same fields for every stage (docs/DESIGN.md §3)."""

    stage: str  # "shard" | "degrade" | "caption"
    root: str  # dataset root URL
    output: str  # the stage's output folder under root: "hr", "lr/<deg_hash>", "captions/<cap_hash>"
    version: str  # the output's config hash: ShardConfig hash, deg_hash, cap_hash
    shards_total: int  # shards this run was asked to do
    shards_done: int  # of which ok (skipped ones included)
    shards_skipped: int  # of which already done by an earlier run
    shards_failed: dict[int, str]  # shard id -> error, after every retry; empty when all are done
    samples: int  # samples in the done shards' outputs (HR images, LR images, caption rows)
    new_samples: int  # of which written by this run
    bad_samples: int  # input samples left out of the done shards' outputs (reasons in their stats)
    seconds: float  # wall time of the run
    samples_per_s: float | None  # new_samples / seconds
    totals: dict  # stage-specific sums over the done shards' `_stats.json` (numbers, or histograms merged)
    extra: dict  # stage-specific facts of the run (e.g. cross-shard dedup counts, caption actors)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageSummary:
        """Read a summary back; a missing or unknown key raises (a renamed key must not read as 0).

        Raises:
            ValueError: naming the stage, the missing keys and the unknown ones.
        """
        names = [f.name for f in fields(cls)]
        missing, unknown = [n for n in names if n not in d], sorted(set(d) - set(names))
        if missing or unknown:
            raise ValueError(f"summary of stage {d.get('stage', '?')!r} does not match StageSummary: "
                             f"missing {missing}, unknown {unknown}")
        return cls(**d)


def add_totals(into: dict, stats: dict, keys: Iterable[str]) -> dict:
    """Add `stats[k]` for each k into `into`: numbers are summed, dicts (error histograms) merged by key."""
    for k in keys:
        v = stats.get(k)
        if isinstance(v, dict):
            merged = into[k] = into.get(k) or {}  # a 0 placeholder (no shard seen yet) becomes the histogram
            for name, count in v.items():
                merged[name] = merged.get(name, 0) + count
        else:
            into[k] = into.get(k, 0) + (v or 0)
    return into


def summarize(stage: str, root: str, output: str, version: str, results: Sequence[ShardResult], seconds: float,
              totals: Sequence[str] = (), **extra) -> dict:
    """The run summary (`StageSummary.to_dict()`) of `results`, one per shard.

    Args:
        totals: `_stats.json` keys summed (or merged, for histograms) over the done shards.
        **extra: stage-specific facts, stored under "extra".
    """
    sums: dict = {k: 0 for k in totals}
    for r in results:
        if r.ok:
            add_totals(sums, r.stats or {}, totals)
    for k, v in sums.items():  # histograms most frequent first; float sums rounded for a readable JSON
        if isinstance(v, dict):
            sums[k] = dict(sorted(v.items(), key=lambda kv: -kv[1]))
        elif isinstance(v, float):
            sums[k] = round(v, 3)
    new = sum(r.n for r in results if r.ok and not r.skipped)
    return StageSummary(
        stage=stage, root=root, output=output, version=version, shards_total=len(results),
        shards_done=sum(r.ok for r in results), shards_skipped=sum(r.ok and r.skipped for r in results),
        shards_failed={r.shard_id: r.err or "" for r in sorted(results, key=lambda r: r.shard_id) if not r.ok},
        samples=sum(r.n for r in results if r.ok), new_samples=new,
        bad_samples=sum(r.n_bad for r in results if r.ok), seconds=round(seconds, 3),
        samples_per_s=round(new / seconds, 3) if seconds > 0 else None, totals=sums, extra=extra,
    ).to_dict()


class ProgressReporter:
    """`report(result, done, total)` after every finished shard: one `dataset.progress` line through `emit`,
    e.g. `degrade: 3/8 shards (38%) | shard 000002 ok, 6 images | 4.20 images/s | elapsed 12s | ETA 20s`.

    Args:
        stage: the line's prefix ("shard", "degrade", "caption").
        noun: what `ShardResult.n` counts ("images", "captions"); the rate is `<noun>/s` over fresh samples.
        emit: where the line goes (a logger's `info`, or print to stderr).
        clock: seconds since some start (time.monotonic); the reporter's creation is the start.
    """

    def __init__(self, stage: str, noun: str, emit: Callable[[str], None], clock: Callable[[], float]):
        self.stage, self.noun, self.emit, self.clock = stage, noun, emit, clock
        self.t0, self.fresh, self.skipped = clock(), 0, 0

    def __call__(self, res: ShardResult, done: int, total: int) -> None:
        self.fresh += 0 if res.skipped or not res.ok else res.n
        self.skipped += res.ok and res.skipped
        elapsed = self.clock() - self.t0
        state = "skipped" if res.skipped else ("ok" if res.ok else "FAILED")
        detail = f"shard {res.shard_id:06d} {state}, {res.n} {self.noun}" + (f", {res.n_bad} bad" if res.n_bad else "")
        self.emit(progress_line(self.stage, done, total, "shards", elapsed, rate=self.fresh / max(elapsed, 1e-9),
                                rate_unit=f"{self.noun}/s", detail=detail, done_at_start=self.skipped))
        if not res.ok:
            self.emit(f"[{self.stage}] shard {res.shard_id:06d} error: {(res.err or '').splitlines()[0]}")


def run_in_process(shards: Sequence, call: Callable[[object], ShardResult], retries: int = 0,
                   progress: Callable[[ShardResult, int, int], None] | None = None) -> list[ShardResult]:
    """The single-process counterpart of `dataset.distributed.distribute` (tests, `nsarm shard|degrade|caption`):
    `call(shard)` for each shard in order, a failed one re-run up to `retries` times; one result per shard."""
    results: list[ShardResult] = []
    for shard in shards:
        res = call(shard)
        for _ in range(retries):
            if res.ok:
                break
            res = call(shard)
        results.append(res)
        if progress:
            progress(res, len(results), len(shards))
    return results

"""One progress-line format for every long stage (shard, degrade, caption, train), so a flow run's log and a CLI
read the same way:

    degrade: 3/8 shards (38%) | shard 000002 ok, 6 images | 4.2 images/s | elapsed 12s | ETA 20s

Pure formatting (no I/O); each stage writes the line through its own logger (the flows forward those loggers into
the Prefect flow run, flows/progress.py) or prints it.
"""

from __future__ import annotations


def format_seconds(seconds: float) -> str:
    """12s, 3m05s, 1h02m: short enough for a log line."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(done: int, total: int, elapsed: float, done_at_start: int = 0) -> float | None:
    """Remaining time at the rate since the start (None before any progress). `done_at_start` excludes work a
    resumed run found already done, which took no time here."""
    fresh = done - done_at_start
    if fresh <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0) * elapsed / fresh


def progress_line(stage: str, done: int, total: int, unit: str, elapsed: float, *, rate: float | None = None,
                  rate_unit: str = "", detail: str = "", done_at_start: int = 0, eta: float | None = None) -> str:
    """`stage: done/total unit (pct) | detail | rate rate_unit | elapsed | ETA` (empty parts left out); `eta`
    replaces the estimate from the average rate (e.g. when start-up time would inflate it)."""
    parts = [f"{stage}: {done}/{total} {unit} ({100 * done / total if total else 100:.0f}%)"]
    if detail:
        parts.append(detail)
    if rate is not None:
        parts.append(f"{rate:.2f} {rate_unit}".rstrip())
    parts.append(f"elapsed {format_seconds(elapsed)}")
    eta = eta_seconds(done, total, elapsed, done_at_start) if eta is None else eta
    parts.append("done" if done >= total else (f"ETA {format_seconds(eta)}" if eta is not None else "ETA ?"))
    return " | ".join(parts)

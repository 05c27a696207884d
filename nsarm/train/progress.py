"""Training progress in the driver: `trainer.fit()` blocks while rank 0 logs its metrics to MLflow, so a watcher
thread polls that run and logs one line per new `log_every` step through `nsarm.train.progress`'s logger:

    train stage 1: 40/300 steps (13%) | loss 0.5120 | 12.30 samples/s | elapsed 1m02s | ETA 6m43s

The thread runs in a copy of the caller's context (`contextvars`), so a Prefect flow run that forwards this logger
(flows/progress.py) gets the lines in its own log; without MLflow there is nothing to watch and nothing is logged.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time

from dataset.progress import eta_seconds, progress_line
from nsarm import tracking

log = logging.getLogger(__name__)


class TrainProgress:
    """Polls MLflow run `run_id` every `poll_s` seconds while training; use as a context manager around fit()."""

    def __init__(self, label: str, run_id: str, tracking_uri: str, total_steps: int, num_workers: int,
                 poll_s: float = 5.0):
        self.label, self.run_id, self.total, self.num_workers = label, run_id, total_steps, num_workers
        self.tracking_uri, self.poll_s = tracking_uri, poll_s
        self.lines: list[str] = []  # what was logged (the flow's summary and tests read it)
        self._last_step, self._start_step = None, 0
        self._first: tuple[float, int] | None = None  # (time, step) of the first step seen
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        ctx = contextvars.copy_context()  # the caller's Prefect run context, if any
        self._thread = threading.Thread(target=ctx.run, args=(self._loop,), name=f"progress {label}", daemon=True)

    def __enter__(self) -> TrainProgress:
        # a resumed run's earlier steps are in the same MLflow run but took no time here: the ETA leaves them out
        self._start_step = max((step for step, _ in self._safe(self._history) or ()), default=0)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._safe(self.poll)  # the last step, logged once fit() has returned

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._safe(self.poll)

    def _safe(self, fn):
        """fn(), or None with one warning: a tracking-server hiccup must not stop training."""
        try:
            return fn()
        except Exception as e:
            log.warning("%s: cannot read progress from MLflow (%s: %s)", self.label, type(e).__name__, e)
            return None

    def _history(self) -> list[tuple[int, float]]:
        return tracking.metric_history(self.run_id, "train/loss", self.tracking_uri)

    def poll(self) -> str | None:
        """Log the newest step if it advanced; returns the line (None when nothing new)."""
        history = self._history()
        if not history:
            return None
        step, loss = max(history)
        if step == self._last_step or step <= self._start_step:
            return None
        self._last_step = step
        now = time.monotonic()
        if self._first is None:  # Ray Train's start-up comes before the first step: rate from here on
            self._first = (now, step)
        t_first, step_first = self._first
        eta = eta_seconds(step, self.total, now - t_first, step_first) if step > step_first else None
        per_worker = tracking.get_run_data(self.run_id, self.tracking_uri)["metrics"].get(
            "perf/samples_per_s_per_worker")
        line = progress_line(self.label, step, self.total, "steps", now - self._t0,
                             rate=None if per_worker is None else per_worker * self.num_workers,
                             rate_unit="samples/s", detail=f"loss {loss:.4f}", eta=eta,
                             done_at_start=step if eta is None else 0)  # no rate yet: "ETA ?"
        log.info(line)
        self.lines.append(line)
        return line

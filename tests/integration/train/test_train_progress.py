"""Training progress in the driver (issue 21.2): while Ray Train's fit() blocks, `TrainProgress` polls the stage's
MLflow run on a real tracking server and logs step/total, loss, samples/s and an ETA; steps a resumed run had
already logged are not reported again."""

from __future__ import annotations

import time

import pytest

from nsarm import tracking
from nsarm.train.progress import TrainProgress

pytestmark = pytest.mark.integration


def _log(run_id: str, uri: str, step: int, loss: float) -> None:
    with tracking.start_run("progress-test", run_id=run_id, tracking_uri=uri):
        tracking.log_metrics({"train/loss": loss, "perf/samples_per_s_per_worker": 3.0}, step=step)


def _wait_for(progress: TrainProgress, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(progress.lines) < n and time.monotonic() < deadline:
        time.sleep(0.1)


def test_progress_lines_from_the_stage_run(mlflow_server):
    run_id = tracking.create_run("progress-test", tracking_uri=mlflow_server)
    _log(run_id, mlflow_server, 5, 0.9)  # before this call: a resumed run's earlier steps
    with TrainProgress("train stage 1", run_id, mlflow_server, total_steps=10, num_workers=2, poll_s=0.2) as p:
        _log(run_id, mlflow_server, 6, 0.5)
        _wait_for(p, 1)
        time.sleep(0.5)
        _log(run_id, mlflow_server, 8, 0.25)
        _wait_for(p, 2)
        _log(run_id, mlflow_server, 10, 0.125)
    first, second, last = p.lines
    assert first.startswith("train stage 1: 6/10 steps (60%) | loss 0.5000 | 6.00 samples/s") and "ETA ?" in first
    assert second.startswith("train stage 1: 8/10 steps (80%) | loss 0.2500") and "ETA ?" not in second
    assert last.startswith("train stage 1: 10/10 steps (100%) | loss 0.1250") and last.endswith("| done")

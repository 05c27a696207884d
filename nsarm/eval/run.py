"""End-to-end evaluation entry points (what `nsarm eval` and the train-nsarm flow's evaluate step call).

    evaluate_folders(cfg, "realsr", {"nsarm": "out/nsarm", "seesr": "out/seesr"}, hr_dir=..., out_dir=...)
    evaluate_upscaler(cfg, testset, upscale_fn, name="ckpt-40k", out_dir=..., mlflow=MlflowTarget(...))

Each scores with one `MetricSuite`, writes the report (report.py) and, when `mlflow` is given, logs the config as
params, the summary as a table + metrics and the report folder as artifacts through `nsarm.tracking`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from nsarm.eval.evaluate import UpscaleFn, score_folder, score_testset
from nsarm.eval.metrics import MetricConfig, MetricSuite
from nsarm.eval.report import Report, write_report
from nsarm.eval.testsets import TestSet, resolve_eval_size


@dataclass(frozen=True)
class MlflowTarget:
    """Where to log: an experiment (new run) or an existing `run_id` (e.g. the training run being evaluated)."""

    experiment: str = "nsarm-eval"
    tracking_uri: str | None = None  # None -> $MLFLOW_TRACKING_URI / MLflow default
    run_name: str | None = None
    run_id: str | None = None


def log_report(report: Report, testset: str, cfg: MetricConfig, target: MlflowTarget, **params) -> str:
    """Log a written report to MLflow; returns the run id. Metrics are named `{testset}.{column}` per method row
    when only one method was scored (a checkpoint), so runs can be compared and the champion chosen."""
    from nsarm import tracking

    with tracking.start_run(target.experiment, run_name=target.run_name, run_id=target.run_id,
                            tracking_uri=target.tracking_uri, tags={"nsarm.eval.testset": testset}) as run_id:
        tracking.log_params({f"eval.{testset}": {"metric": asdict(cfg), **params}})
        table = report.summary.drop(columns=["method"]) if len(report.summary) == 1 else report.summary
        tracking.log_eval_table(table, f"eval/{testset}/summary", metric_prefix=f"{testset}.")
        tracking.log_artifact(report.out_dir, f"eval/{testset}")
    return run_id


def evaluate_folders(cfg: MetricConfig, testset: str, sr_dirs: Mapping[str, str | Path], *, out_dir: str | Path,
                     hr_dir: str | Path | None = None, eval_size: int | None = None, mu_g: float | None = None,
                     mlflow: MlflowTarget | None = None, suite: MetricSuite | None = None,
                     per_metric_plots: bool = False) -> Report:
    """Comparison mode: score each method's output folder on one test set, report them side by side.

    `eval_size` None means the paper's size for `testset` (RP60: 512²; see `testsets.resolve_eval_size`).
    """
    if not sr_dirs:
        raise ValueError("give at least one SR folder to score")
    eval_size = resolve_eval_size(testset, eval_size)
    suite = suite or MetricSuite(cfg)
    per_method: dict[str, pd.DataFrame] = {
        name: score_folder(suite, d, hr_dir, eval_size=eval_size) for name, d in sr_dirs.items()}
    report = write_report(out_dir, testset, per_method, suite.available, suite.unavailable, mu_g, per_metric_plots,
                          suite.cfg.protocol)
    if mlflow is not None:
        log_report(report, testset, cfg, mlflow, sr_dirs={k: str(v) for k, v in sr_dirs.items()},
                   hr_dir=str(hr_dir), mu_g=str(mu_g))
    return report


def evaluate_upscaler(cfg: MetricConfig, testset: TestSet, upscale_fn: UpscaleFn, *, name: str,
                      out_dir: str | Path, batch_size: int = 1, eval_size: int | None = None,
                      mu_g: float | None = None, baselines: Mapping[str, pd.DataFrame] | None = None,
                      mlflow: MlflowTarget | None = None, suite: MetricSuite | None = None,
                      per_metric_plots: bool = False) -> Report:
    """Model path: upscale `testset` with `upscale_fn`, save SR PNGs under `out_dir/sr`, score and report.

    Args:
        baselines: per-image tables of other methods/checkpoints on the same set, reported beside this one and
            sharing its mu_G (e.g. a previous champion's `per_image.parquet` filtered to one method).
        eval_size: None means the paper's size for the set (RP60: 512²; see `testsets.resolve_eval_size`).
    """
    eval_size = resolve_eval_size(testset.name, eval_size)
    suite = suite or MetricSuite(cfg)
    out_dir = Path(out_dir)
    df = score_testset(suite, testset, upscale_fn, sr_out_dir=out_dir / "sr", batch_size=batch_size,
                       eval_size=eval_size)
    per_method = {name: df, **dict(baselines or {})}
    report = write_report(out_dir, testset.name, per_method, suite.available, suite.unavailable, mu_g,
                          per_metric_plots, suite.cfg.protocol)
    if mlflow is not None:
        if baselines:  # log only this checkpoint's row as metrics; the full table still goes in as an artifact
            report = Report(report.out_dir, report.summary[report.summary["method"] == name], report.files,
                            report.mu_g)
        log_report(report, testset.name, cfg, mlflow, checkpoint=name, batch_size=batch_size)
    return report

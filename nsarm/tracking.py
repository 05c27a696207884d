"""The project's only MLflow adapter: start/resume runs, log params/metrics/artifacts/images and eval tables.

Libraries call these small functions instead of importing mlflow (DESIGN §2); nothing happens at import time.
The tracking URI comes from the caller, else `$MLFLOW_TRACKING_URI`, else MLflow's own default.

    with start_run("nsarm-eval", run_name="ckpt-40k", tracking_uri="http://127.0.0.1:5000") as run_id:
        log_params({"metric": asdict(cfg)})
        log_eval_table(summary_df, "eval/realsr")
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_MAX_PARAM_LEN = 6000  # MLflow rejects longer param values (limit 6000 chars in MLflow 2.x/3.x)


def init_tracking(tracking_uri: str | None = None) -> str:
    """Point MLflow at `tracking_uri` (if given) and return the URI in effect."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.get_tracking_uri()


@contextlib.contextmanager
def start_run(experiment: str, *, run_name: str | None = None, run_id: str | None = None,
              tracking_uri: str | None = None, tags: Mapping[str, str] | None = None,
              nested: bool = False) -> Iterator[str]:
    """Start a new run in `experiment`, or resume `run_id`; yields the run id and ends the run on exit.

    An exception inside the block marks the run FAILED (MLflow's context-manager behaviour) and propagates.
    """
    import mlflow

    init_tracking(tracking_uri)
    if run_id is None:
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested, tags=dict(tags or {})) as run:
        yield run.info.run_id


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"metric": {"crop_border": 0}} -> {"metric.crop_border": "0"}; values stringified and length-capped."""
    flat: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = str(v)[:_MAX_PARAM_LEN]
    return flat


def log_params(params: Mapping[str, Any]) -> None:
    """Log (nested) params, e.g. `{"metric": asdict(MetricConfig(...))}`, flattened with dotted keys."""
    import mlflow

    flat = flatten(params)
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params per request
        mlflow.log_params(dict(items[i:i + 100]))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> dict[str, float]:
    """Log finite numeric metrics; NaN/inf (an unavailable metric, PSNR of identical images) are skipped.

    Returns:
        The metrics actually logged.
    """
    import mlflow

    clean = {k: float(v) for k, v in metrics.items()
             if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))}
    if clean:
        mlflow.log_metrics(clean, step=step)
    return clean


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Upload one file (or a whole folder) to the active run under `artifact_path`."""
    import mlflow

    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    elif path.is_file():
        mlflow.log_artifact(str(path), artifact_path)
    else:
        raise FileNotFoundError(f"artifact to log does not exist: {path}")


def log_image(image: Any, artifact_file: str) -> None:
    """Log an image (numpy uint8 HxWx3 or a PNG path) as `artifact_file` (e.g. "eval/sample.png")."""
    import mlflow

    if isinstance(image, str | Path):
        from PIL import Image

        with Image.open(image) as im:
            image = im.convert("RGB").copy()
    mlflow.log_image(image, artifact_file=artifact_file)


def log_eval_table(table: Any, name: str, *, step: int | None = None, metric_prefix: str | None = None) -> None:
    """Log an evaluation summary (pandas DataFrame, one row per method): as a table artifact `{name}.json`,
    a CSV `{name}.csv`, and, when it has a single row, its numeric cells as metrics `{metric_prefix}{column}`.

    The single-row case is a checkpoint's evaluation; its metrics are what the registry step compares.
    """
    import tempfile

    import mlflow

    mlflow.log_table(data=table, artifact_file=f"{name}.json")
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / f"{Path(name).name}.csv"
        table.to_csv(csv, index=False)
        parent = str(Path(name).parent)
        mlflow.log_artifact(str(csv), None if parent == "." else parent)
    if len(table) == 1:
        prefix = metric_prefix if metric_prefix is not None else f"{Path(name).name}."
        row = table.iloc[0].to_dict()
        log_metrics({f"{prefix}{k}": v for k, v in row.items()}, step=step)

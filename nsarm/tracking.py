"""The project's only MLflow adapter: start/resume runs, log params/metrics/artifacts/images and eval tables.

Libraries call these small functions instead of importing mlflow (docs/DESIGN.md §2); nothing happens at import time.
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
    else:
        # MLflow refuses to resume a run while the process's active experiment (set by any earlier
        # set_experiment in this process) is another one: make the run's own experiment the active one.
        mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
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


# -- training runs and the model registry (used by nsarm/train; versions point at checkpoint URIs, never bytes) --

def enable_system_metrics() -> None:
    """Log CPU/memory/GPU usage as `system/*` metrics of runs started after this call (needs psutil)."""
    import mlflow

    mlflow.enable_system_metrics_logging()


def create_run(experiment: str, *, run_name: str | None = None, tracking_uri: str | None = None,
               tags: Mapping[str, str] | None = None) -> str:
    """Create a run without making it active (e.g. a driver that hands the id to a training worker)."""
    import mlflow

    init_tracking(tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
    return run.info.run_id


def run_exists(run_id: str, tracking_uri: str | None = None) -> bool:
    import mlflow

    init_tracking(tracking_uri)
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def get_run_data(run_id: str, tracking_uri: str | None = None) -> dict:
    """{"params", "metrics" (latest values), "tags", "status", "artifact_uri"} of a run."""
    import mlflow

    init_tracking(tracking_uri)
    run = mlflow.MlflowClient().get_run(run_id)
    return {"params": dict(run.data.params), "metrics": dict(run.data.metrics), "tags": dict(run.data.tags),
            "status": run.info.status, "artifact_uri": run.info.artifact_uri,
            "experiment_id": run.info.experiment_id}


def list_artifacts(run_id: str, path: str | None = None, tracking_uri: str | None = None) -> list[str]:
    """Artifact paths of a run under `path` (recursively)."""
    import mlflow

    init_tracking(tracking_uri)
    client = mlflow.MlflowClient()
    out, todo = [], [path]
    while todo:
        for f in client.list_artifacts(run_id, todo.pop()):
            (todo.append(f.path) if f.is_dir else out.append(f.path))
    return sorted(out)


def metric_history(run_id: str, key: str, tracking_uri: str | None = None) -> list[tuple[int, float]]:
    import mlflow

    init_tracking(tracking_uri)
    return [(m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key)]


def register_model_version(name: str, *, source: str, run_id: str | None = None,
                           tags: Mapping[str, str] | None = None, description: str | None = None,
                           tracking_uri: str | None = None) -> str:
    """Create registered model `name` if missing and add a version whose source is `source` (e.g.
    `runs:/<id>/model-pointer/stage2`); returns the version number as a string."""
    import mlflow

    init_tracking(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="NSARM checkpoints: each version's tags hold the "
                                                         "checkpoint URI and its sha256")
    mv = client.create_model_version(name, source=source, run_id=run_id, tags={k: str(v) for k, v in
                                                                               (tags or {}).items()},
                                     description=description)
    return str(mv.version)


def set_model_alias(name: str, alias: str, version: str, tracking_uri: str | None = None) -> None:
    import mlflow

    init_tracking(tracking_uri)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def set_model_version_tags(name: str, version: str, tags: Mapping[str, Any], tracking_uri: str | None = None) -> None:
    import mlflow

    init_tracking(tracking_uri)
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v))


def get_model_version(name: str, alias: str | None = None, version: str | None = None,
                      tracking_uri: str | None = None) -> dict:
    """A registered version (by alias or number): {"version", "source", "run_id", "tags", "aliases"}."""
    import mlflow

    init_tracking(tracking_uri)
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    return {"version": str(mv.version), "source": mv.source, "run_id": mv.run_id, "tags": dict(mv.tags),
            "aliases": list(mv.aliases)}


def log_dataset(manifest: Mapping[str, Any], manifest_url: str, *, context: str = "training") -> None:
    """Record a dataset in the active run: an MLflow dataset input (name, digest = manifest hash, source = root),
    the manifest as an artifact, and its counts as metrics. Used by the build-dataset flow and by training
    (lineage: which dataset a model was trained on)."""
    import hashlib
    import json
    import tempfile

    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    body = json.dumps(manifest, sort_keys=True, default=str)
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    name = f"{manifest.get('name', 'nsarm-dataset')}@{manifest.get('version', digest)}"
    mlflow.log_input(MetaDataset(HTTPDatasetSource(url=str(manifest.get("root", manifest_url))), name=name,
                                 digest=digest), context=context)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        mlflow.log_artifact(str(path), artifact_path="dataset")
    counts = _numeric_leaves(manifest)
    if counts:
        log_metrics(counts)
    mlflow.set_tag("dataset.manifest", manifest_url)


def _numeric_leaves(obj: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """{"hr": {"counts": {"successes": 7}}} -> {"hr.counts.successes": 7}; lists, strings and bools skipped."""
    out: dict[str, float] = {}
    for k, v in obj.items():
        if isinstance(v, Mapping):
            out.update(_numeric_leaves(v, f"{prefix}{k}."))
        elif isinstance(v, numbers.Number) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out

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


def mlflow_client(tracking_uri: str | None = None):
    """An `mlflow.MlflowClient` of `tracking_uri` (made the process's URI, as `init_tracking`): the one way this
    module and nsarm/pyfunc.py reach the server outside an active run."""
    import mlflow

    init_tracking(tracking_uri)
    return mlflow.MlflowClient()


def _experiment(client, name: str) -> tuple[str, dict[str, str]]:
    """(id, tags) of experiment `name`, created (without tags) when missing."""
    exp = client.get_experiment_by_name(name)
    return (exp.experiment_id, dict(exp.tags)) if exp else (client.create_experiment(name), {})


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
        mlflow.set_experiment(experiment_id=mlflow_client().get_run(run_id).info.experiment_id)
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
    client = mlflow_client(tracking_uri)
    run = client.create_run(_experiment(client, experiment)[0], run_name=run_name, tags=dict(tags or {}))
    return run.info.run_id


def run_exists(run_id: str, tracking_uri: str | None = None) -> bool:
    import mlflow

    try:
        mlflow_client(tracking_uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def get_run_data(run_id: str, tracking_uri: str | None = None) -> dict:
    """{"params", "metrics" (latest values), "tags", "status", "artifact_uri"} of a run."""
    run = mlflow_client(tracking_uri).get_run(run_id)
    return {"params": dict(run.data.params), "metrics": dict(run.data.metrics), "tags": dict(run.data.tags),
            "status": run.info.status, "artifact_uri": run.info.artifact_uri,
            "experiment_id": run.info.experiment_id}


def list_artifacts(run_id: str, path: str | None = None, tracking_uri: str | None = None) -> list[str]:
    """Artifact paths of a run under `path` (recursively)."""
    client = mlflow_client(tracking_uri)
    out, todo = [], [path]
    while todo:
        for f in client.list_artifacts(run_id, todo.pop()):
            (todo.append(f.path) if f.is_dir else out.append(f.path))
    return sorted(out)


def metric_history(run_id: str, key: str, tracking_uri: str | None = None) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow_client(tracking_uri).get_metric_history(run_id, key)]


# MLflow 3's experiment type (the UI's "Experiment type: Machine learning" vs GenAI), an experiment tag.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def mark_model_training(experiment: str, tracking_uri: str | None = None) -> str:
    """Create `experiment` if missing and mark it a model-training experiment; returns its id."""
    client = mlflow_client(tracking_uri)
    exp_id, tags = _experiment(client, experiment)
    if tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return exp_id


def find_model_version(name: str, run_id: str, tags: Mapping[str, Any], tracking_uri: str | None = None) -> str | None:
    """The version of `name` registered from `run_id` whose tags include `tags` (e.g. the export's sha256), or None."""
    want = {k: str(v) for k, v in tags.items()}
    for mv in mlflow_client(tracking_uri).search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if all(mv.tags.get(k) == v for k, v in want.items()):
            return str(mv.version)
    return None


def log_model_metrics(model_id: str, run_id: str, metrics: Mapping[str, float],
                      tracking_uri: str | None = None) -> dict[str, float]:
    """Log finite metrics on an MLflow 3 logged model (they show on its registered versions' pages); returns them."""
    import mlflow

    init_tracking(tracking_uri)
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real) and math.isfinite(float(v))}
    if clean:
        mlflow.log_metrics(clean, run_id=run_id, model_id=model_id)
    return clean


def logged_model_metrics(model_id: str, tracking_uri: str | None = None) -> dict[str, float]:
    """{key: latest value} of an MLflow 3 logged model's metrics."""
    import mlflow

    init_tracking(tracking_uri)
    metrics = sorted(mlflow.get_logged_model(model_id).metrics or [], key=lambda m: (m.timestamp, m.step))
    return {m.key: m.value for m in metrics}


def set_model_version_description(name: str, version: str, description: str, tracking_uri: str | None = None) -> None:
    mlflow_client(tracking_uri).update_model_version(name, version, description=description)


def register_model_version(name: str, *, source: str, run_id: str | None = None,
                           tags: Mapping[str, str] | None = None, description: str | None = None,
                           model_id: str | None = None, tracking_uri: str | None = None) -> str:
    """Create registered model `name` if missing and add a version whose source is `source` (an MLflow model URI,
    `models:/<model id>`, with that logged model's `model_id`); returns the version number as a string."""
    import mlflow

    client = mlflow_client(tracking_uri)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="NSARM ×4 super-resolution (pyfunc: uint8 RGB images in, "
                                                         "×4 images out); the weights stay at the export URI in "
                                                         "each version's tags and are sha256-checked at load")
    mv = client.create_model_version(name, source=source, run_id=run_id, tags={k: str(v) for k, v in
                                                                               (tags or {}).items()},
                                     description=description, model_id=model_id)
    return str(mv.version)


def set_model_alias(name: str, alias: str, version: str, tracking_uri: str | None = None) -> None:
    mlflow_client(tracking_uri).set_registered_model_alias(name, alias, version)


def get_model_version(name: str, alias: str | None = None, version: str | None = None,
                      tracking_uri: str | None = None) -> dict:
    """A registered version (by alias or number): {"version", "source", "run_id", "model_id", "tags", "aliases",
    "description"}."""
    client = mlflow_client(tracking_uri)
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    # the server's answer may leave model_id empty; the source of a logged model's version is models:/<model id>
    model_id = mv.model_id or (mv.source.removeprefix("models:/") if mv.source.startswith("models:/m-") else None)
    return {"version": str(mv.version), "source": mv.source, "run_id": mv.run_id, "model_id": model_id,
            "tags": dict(mv.tags), "aliases": list(mv.aliases), "description": mv.description}


def log_dataset(manifest: Mapping[str, Any], manifest_url: str, *, context: str = "training",
                details: bool = True) -> None:
    """Record a dataset in the active run: an MLflow dataset input (name, digest = manifest hash, source = root) and
    the manifest as an artifact; with `details` (the build run) also its stage configs as params `dataset.*` and its
    counts as metrics. Used by the build-dataset flow and by training (lineage: which dataset a model was trained
    on; there `details=False`, the run's own params say which root and version)."""
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
    if details:
        configs, counts = split_manifest(manifest)
        log_params({"dataset": configs})
        log_metrics(counts)
    mlflow.set_tag("dataset.manifest", manifest_url)


def split_manifest(manifest: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """(configs, counts) of a manifest: every value under a `config` key (stage settings, strings included) and the
    manifest format as nested params, and the other numeric leaves (samples, shards, per-stage counts, rates) as
    flat metrics."""
    configs: dict[str, Any] = {}
    counts: dict[str, float] = {}

    def walk(obj: Mapping[str, Any], path: tuple[str, ...], in_config: bool) -> None:
        for k, v in obj.items():
            inner = in_config or k in ("config", "format")
            if isinstance(v, Mapping):
                walk(v, (*path, str(k)), inner)
            elif inner:
                node = configs
                for part in path:
                    node = node.setdefault(part, {})
                node[str(k)] = v
            elif isinstance(v, numbers.Number) and not isinstance(v, bool):
                counts[".".join((*path, str(k)))] = float(v)

    walk(manifest, (), False)
    return configs, counts

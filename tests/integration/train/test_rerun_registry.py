"""Reruns change nothing that exists (issue #21 item 1), and the training run is MLflow lineage (item 4): a stage run
twice with the same settings against one real MLflow server trains nothing new, registers no new version and leaves
every export byte as it was (each version's sha256 still verifies); a run with more steps exports to a new path.
The training run has the dataset as an input and its experiment is a model-training experiment."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _files(uri: str) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(uri)): (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(uri).rglob("*") if p.is_file()}


def test_rerun_registers_nothing_and_rewrites_no_export(ray_local, train_root, tmp_path, mlflow_server):
    import mlflow

    from nsarm import tracking
    from nsarm.train.export import sha256_file
    from nsarm.train.ray_trainer import run_stage
    from nsarm.train.registry import EXPERIMENT, REGISTERED_MODEL

    client = mlflow.MlflowClient(mlflow_server)
    root, storage = train_root["root"], str(tmp_path / "runs")
    over = {"steps": 3, "checkpoint_every": 3, "image_every": 100, "log_every": 1}
    first = run_stage(root, "tiny", 1, 2, False, storage_path=storage, run_name="rerun", overrides=over,
                      tracking_uri=mlflow_server)
    export = first["export"]["uri"]
    before = _files(export)
    versions = {mv.version for mv in client.search_model_versions(f"name='{REGISTERED_MODEL}'")}

    again = run_stage(root, "tiny", 1, 2, False, storage_path=storage, run_name="rerun", overrides=over,
                      tracking_uri=mlflow_server)
    assert again["model_version"] == first["model_version"] and again["export"] == first["export"]
    assert {mv.version for mv in client.search_model_versions(f"name='{REGISTERED_MODEL}'")} == versions
    assert _files(export) == before  # same bytes, not even rewritten
    assert len(tracking.metric_history(first["mlflow_run_id"], "train/loss", mlflow_server)) == 3  # no step again
    assert len(client.search_logged_models([client.get_run(first["mlflow_run_id"]).info.experiment_id],
                                           filter_string=f"source_run_id='{first['mlflow_run_id']}'")) == 1

    longer = run_stage(root, "tiny", 1, 2, False, storage_path=storage, run_name="rerun",
                       overrides={**over, "steps": 4}, tracking_uri=mlflow_server)
    assert longer["export"]["uri"] != export and _files(export) == before  # a new export gets a new path
    assert longer["model_version"] not in versions
    for mv in client.search_model_versions(f"name='{REGISTERED_MODEL}'"):
        assert sha256_file(f"{mv.tags['checkpoint_uri']}/model.safetensors") == mv.tags["sha256"], mv.version

    # lineage: the dataset is the training run's input; the experiment is a model-training one
    run = client.get_run(first["mlflow_run_id"])
    manifest = train_root["manifest"]
    assert [(d.dataset.name, [t.value for t in d.tags]) for d in run.inputs.dataset_inputs] == [
        (f"{manifest['name']}@{manifest['version']}", ["training"])]
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"

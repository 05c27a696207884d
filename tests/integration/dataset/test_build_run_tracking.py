"""The dataset-build run in MLflow (issue #21 item 4): the stage configs of the manifest are params, only counts
are metrics, and the dataset is the run's input, on a real MLflow server and a dataset root of real photos."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_build_run_logs_configs_as_params_and_counts_as_metrics(sample_photos, mlflow_server, tmp_path):
    import mlflow

    from dataset.contract import manifest_path
    from dataset.manifest import write_manifest
    from nsarm import tracking
    from nsarm.train.photo_dataset import build_photo_dataset

    root = str(tmp_path / "root")
    build_photo_dataset([p.path for p in sample_photos[:3]], root, hr_size=256, shard_size=6)
    manifest = write_manifest(root, name="build-run-test")
    with tracking.start_run("nsarm-datasets-test", tracking_uri=mlflow_server) as run_id:
        tracking.log_dataset(manifest, manifest_path(root), context="build")
    run = mlflow.MlflowClient(mlflow_server).get_run(run_id)

    (deg, lr), = manifest["lr"].items()
    assert lr["config"], "the LR stage wrote its config"
    for key, value in lr["config"].items():
        assert run.data.params[f"dataset.lr.{deg}.config.{key}"] == str(value)
        assert not any(m.endswith(f"config.{key}") for m in run.data.metrics)
    assert run.data.params["dataset.format"] == str(manifest["format"])
    assert not any("config" in k or k == "format" for k in run.data.metrics), run.data.metrics
    assert run.data.metrics["num_samples"] == 3 and run.data.metrics["hr.counts.successes"] == 3
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == [f"build-run-test@{manifest['version']}"]

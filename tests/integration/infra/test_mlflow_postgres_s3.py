"""The cluster's MLflow recipe (infra/mlflow/start-mlflow.sh) on a real PostgreSQL backend and a moto S3 artifact store.

A run logged through the client must read back through the server, its rows must be in PostgreSQL (not in some
fallback store) and its artifact bytes must be in the S3 bucket under the configured prefix. The registry part
mirrors what training does (docs/DESIGN.md §5): a model version whose source is a checkpoint URI, with an alias.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_run_params_metrics_artifact_round_trip(mlflow_postgres_s3, postgres_server, moto_s3, tmp_path):
    import boto3
    from mlflow.tracking import MlflowClient

    srv = mlflow_postgres_s3
    client = MlflowClient(tracking_uri=srv.uri)
    exp_id = client.create_experiment("infra-recipe")
    run_id = client.create_run(exp_id, run_name="postgres-s3").info.run_id

    params = {"preset": "nsarm-8b", "num_workers": "16", "data_root": "s3://nsarm-prod/datasets/unsplash-1m"}
    for key, value in params.items():
        client.log_param(run_id, key, value)
    losses = [0.91, 0.72, 0.55, 0.47, 0.40]
    for step, loss in enumerate(losses):
        client.log_metric(run_id, "loss", loss, step=step)
    payload = json.dumps({"shards": [0, 1, 2], "images": 2873, "run": run_id}, sort_keys=True).encode()
    src = tmp_path / "manifest.json"
    src.write_bytes(payload)
    client.log_artifact(run_id, str(src), artifact_path="dataset")
    client.set_terminated(run_id)

    # Read back through the tracking server.
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == params
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert history == list(enumerate(losses))
    assert [a.path for a in client.list_artifacts(run_id, "dataset")] == ["dataset/manifest.json"]
    local = client.download_artifacts(run_id, "dataset/manifest.json", str(tmp_path / "down"))
    assert open(local, "rb").read() == payload

    # The artifact bytes live in the S3 bucket, under the destination prefix and the experiment's proxied location.
    location = client.get_experiment(exp_id).artifact_location
    assert location.startswith("mlflow-artifacts:"), f"artifacts not proxied by the server: {location}"
    exp_part = location.removeprefix("mlflow-artifacts:").strip("/")
    key = f"{srv.prefix}/{exp_part}/{run_id}/artifacts/dataset/manifest.json"
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=srv.bucket).get("Contents", [])]
    assert key in listed, f"{key} not in bucket {srv.bucket}: {listed}"
    assert s3.get_object(Bucket=srv.bucket, Key=key)["Body"].read() == payload

    # The tracking rows are in PostgreSQL.
    conn = postgres_server.connect(srv.database)
    try:
        cur = conn.cursor()
        cur.execute("SELECT key, value FROM params WHERE run_uuid = %s", (run_id,))
        assert dict(cur.fetchall()) == params
        cur.execute("SELECT step, value FROM metrics WHERE run_uuid = %s AND key = 'loss' ORDER BY step", (run_id,))
        assert cur.fetchall() == list(enumerate(losses))
    finally:
        conn.close()


def test_registry_version_points_at_checkpoint_uri(mlflow_postgres_s3, postgres_server):
    from mlflow.tracking import MlflowClient

    srv = mlflow_postgres_s3
    client = MlflowClient(tracking_uri=srv.uri, registry_uri=srv.uri)
    exp_id = client.create_experiment("infra-registry")
    run_id = client.create_run(exp_id).info.run_id
    client.set_terminated(run_id)
    # Multi-GB checkpoints stay on NSARM_STORAGE; the version records where they are (docs/DESIGN.md §5).
    ckpt = "s3://nsarm-prod/checkpoints/nsarm-8b/stage2/checkpoint_000040"
    client.create_registered_model("nsarm-infra-check")
    version = client.create_model_version("nsarm-infra-check", source=ckpt, run_id=run_id,
                                          tags={"sha256": "0" * 64})
    client.set_registered_model_alias("nsarm-infra-check", "stage2", version.version)

    got = client.get_model_version_by_alias("nsarm-infra-check", "stage2")
    assert (got.version, got.source, got.run_id, got.tags["sha256"]) == (version.version, ckpt, run_id, "0" * 64)
    conn = postgres_server.connect(srv.database)
    try:
        cur = conn.cursor()
        cur.execute("SELECT source FROM model_versions WHERE name = %s", ("nsarm-infra-check",))
        assert cur.fetchall() == [(ckpt,)]
        cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", ("nsarm-infra-check",))
        assert cur.fetchall() == [("stage2", int(version.version))]
    finally:
        conn.close()

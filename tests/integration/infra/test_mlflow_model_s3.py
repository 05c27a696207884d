"""A registered `nsarm` version on the cluster's MLflow recipe (PostgreSQL + S3 via moto) upscales on "another
machine": `nsarm upscale --model models:/nsarm@champion` (and `runs:/<run>/<model name>`) in a fresh process with only
the tracking URI and S3 settings, an empty model cache and another working directory, gives the pixels of
`nsarm upscale --checkpoint` on a local copy of the export. The logged model's files are in the artifact bucket;
the weights are not (they stay at their s3:// export)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
BIN = Path(sys.executable).parent


def _upscale(args: list[str], cwd: Path, env: dict) -> None:
    done = subprocess.run([str(BIN / "nsarm"), "upscale", *args, "--seed", "2", "--device", "cpu"], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_upscale_with_registered_model_from_s3(mlflow_postgres_s3, moto_s3, sample_photos, tmp_path):
    import boto3
    import fsspec
    import torch

    from nsarm import tracking
    from nsarm.model import build_model
    from nsarm.text import build_tiny_text_encoder
    from nsarm.train.export import export_model
    from nsarm.train.registry import EXPERIMENT, register_export

    srv = mlflow_postgres_s3
    bucket = f"nsarm-exports-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=bucket)
    torch.manual_seed(1)
    export = export_model(build_model("tiny"), f"s3://{bucket}/runs/tiny-stage2/export/step000002-test",
                          text_encoder=build_tiny_text_encoder(64), extra={"step": 2})
    run_id = tracking.create_run(EXPERIMENT, run_name="s3-model", tracking_uri=srv.uri)
    version = register_export(export, run_id, 2, srv.uri, aliases=("champion",), preset="tiny")

    lr = tmp_path / "lr.png"
    Image.open(sample_photos[1].path).convert("RGB").resize((40, 40), Image.BICUBIC).save(lr)
    local = tmp_path / "export-copy"
    fsspec.filesystem("s3").get(export["uri"].removeprefix("s3://"), str(local), recursive=True)
    _upscale([str(lr), str(tmp_path / "ref.png"), "--checkpoint", str(local)], tmp_path, {})
    reference = np.asarray(Image.open(tmp_path / "ref.png"))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"MLFLOW_TRACKING_URI": srv.uri, "NSARM_MODEL_CACHE": str(elsewhere / "cache")}
    for uri in ("models:/nsarm@champion", f"runs:/{run_id}/nsarm-stage2", f"models:/nsarm/{version}"):
        out = elsewhere / f"sr-{uri.split(':')[0]}.png"
        _upscale([str(lr), str(out), "--model", uri], elsewhere, env)
        assert np.array_equal(np.asarray(Image.open(out)), reference), uri

    mv = tracking.get_model_version("nsarm", alias="champion", tracking_uri=srv.uri)
    keys = [o["Key"] for page in boto3.client("s3", endpoint_url=moto_s3).get_paginator("list_objects_v2").paginate(
        Bucket=srv.bucket, Prefix=srv.prefix) for o in page.get("Contents", [])]
    model_keys = [k for k in keys if mv["model_id"] in k]
    assert any(k.endswith("/reference.json") for k in model_keys) and any(k.endswith("/MLmodel") for k in model_keys)
    assert not any(k.endswith(".safetensors") for k in model_keys), model_keys

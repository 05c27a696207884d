"""Ray Train checkpoints in object storage (a real moto S3 server, endpoint from $AWS_ENDPOINT_URL): a short tiny
run on 2 CPU workers checkpoints into the bucket, a killed worker resumes from the S3 checkpoint, a rerun of the
same run name resumes from it, and the export lands beside them with a sha256 that verifies."""

from __future__ import annotations

import json

import fsspec
import pytest
import torch

pytestmark = pytest.mark.integration


def _steps(log) -> dict[int, list[int]]:
    return {r: [json.loads(x)["step"] for x in open(f"{log}.rank{r}.jsonl")] for r in range(2)}


def test_checkpoints_resume_and_export_in_s3(ray_local, train_root, s3_bucket, tmp_path, monkeypatch):
    from nsarm.checkpoints import load_checkpoint
    from nsarm.train import state as st
    from nsarm.train.export import verify_export
    from nsarm.train.ray_trainer import run_stage

    root, log, storage = train_root["root"], tmp_path / "keys", f"{s3_bucket}/runs"
    # the Ray workers were started before moto: credentials go in explicitly, the endpoint follows the driver's env
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    monkeypatch.setenv("NSARM_TRAIN_SAMPLE_LOG", str(log))
    monkeypatch.setenv("NSARM_TRAIN_FAIL_AT_STEP", "3")
    monkeypatch.setenv("NSARM_TRAIN_FAIL_RANK", "0")
    over = {"steps": 4, "checkpoint_every": 2, "image_every": 0}
    out = run_stage(root, "tiny", 1, 2, False, storage_path=storage, run_name="s3run", overrides=over,
                    worker_env=creds)
    assert out["metrics"]["step"] == 4
    assert _steps(log) == {0: [1, 2, 3, 3, 4], 1: [1, 2, 3, 3, 4]}  # resumed from the step-2 checkpoint in S3

    fs = fsspec.filesystem("s3")
    bucket = s3_bucket.removeprefix("s3://")
    objects = fs.find(f"{bucket}/runs/s3run")
    states = sorted(p for p in objects if p.endswith("/" + st.STATE_FILE))
    assert len(states) == 2, objects  # steps 2 and 4 (keep_checkpoints 2 of the tiny preset)
    assert out["checkpoint"].startswith(f"{s3_bucket}/runs/s3run/") and fs.exists(f"{out['checkpoint']}/{st.STATE_FILE}")
    with fs.open(f"{out['checkpoint']}/{st.STATE_FILE}", "rb") as f:
        assert torch.load(f, weights_only=True)["step"] == 4

    # the export: under the run prefix, with the sha256 it records, and loadable from S3
    export = out["export"]
    assert export["uri"].startswith(f"{storage}/s3run/export/step000004-")  # write-once: named after steps + config
    assert verify_export(export["uri"])["sha256"] == export["sha256"]
    local = tmp_path / "export"
    fs.get(export["uri"], str(local), recursive=True)
    assert load_checkpoint(local).map_transformer is not None

    # a rerun of the same name with more steps continues from step 4 in S3
    monkeypatch.delenv("NSARM_TRAIN_FAIL_AT_STEP")
    out2 = run_stage(root, "tiny", 1, 2, False, storage_path=storage, run_name="s3run",
                     overrides={**over, "steps": 5}, worker_env=creds)
    assert out2["metrics"]["step"] == 5
    assert _steps(log) == {0: [1, 2, 3, 3, 4, 5], 1: [1, 2, 3, 3, 4, 5]}
    assert verify_export(out2["export"]["uri"])["sha256"] == out2["export"]["sha256"] != export["sha256"]

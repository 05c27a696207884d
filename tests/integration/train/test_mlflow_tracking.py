"""Stage 1 → stage 2 on Ray Train (2 CPU workers, tiny preset, real photos) against a real MLflow server: both
losses decrease; the runs hold params, per-step metrics, sample grids and the dataset manifest; the registry has
versions of `nsarm` whose tags point at the exported checkpoints (URI + sha256) under aliases stage1 / stage2."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def _mean(xs):
    return sum(xs) / len(xs)


def test_two_stages_learn_and_are_tracked(ray_local, train_root, run_storage, mlflow_server):
    from nsarm import tracking
    from nsarm.checkpoints import load_checkpoint
    from nsarm.train.export import sha256_file
    from nsarm.train.ray_trainer import run_stage
    from nsarm.train.registry import REGISTERED_MODEL

    root = train_root["root"]
    over = {"steps": 24, "checkpoint_every": 12, "image_every": 12, "log_every": 1}
    s1 = run_stage(root, "tiny", 1, 2, False, storage_path=run_storage, run_name="ml-s1", overrides=over,
                   tracking_uri=mlflow_server)
    s2 = run_stage(root, "tiny", 2, 2, False, storage_path=run_storage, run_name="ml-s2", overrides=over,
                   init_from=s1["export"]["uri"], tracking_uri=mlflow_server)

    for out, name in ((s1, "stage 1 MSE"), (s2, "stage 2 bitwise CE")):
        hist = [v for _, v in sorted(tracking.metric_history(out["mlflow_run_id"], "train/loss", mlflow_server))]
        assert len(hist) == 24, name
        assert _mean(hist[-6:]) < 0.9 * _mean(hist[:6]), (name, hist)

    run = tracking.get_run_data(s2["mlflow_run_id"], mlflow_server)
    assert run["params"]["train.stage"] == "2" and run["params"]["train.lr"] == "0.001"
    assert run["params"]["model.name"] == "tiny" and run["params"]["scaling.num_workers"] == "2"
    assert run["params"]["train.init_from"] == s1["export"]["uri"]
    assert run["params"]["dataset.version"] == train_root["manifest"]["version"]
    for key in ("train/bit_acc", "train/lr", "perf/samples_per_s_per_worker", "perf/tokens_per_s_per_worker"):
        assert key in run["metrics"], key
    arts = tracking.list_artifacts(s2["mlflow_run_id"], tracking_uri=mlflow_server)
    assert "dataset/manifest.json" in arts
    assert {"samples/step_000012.png", "samples/step_000024.png"} <= set(arts)
    assert "model-pointer/stage2/export.json" in arts

    for out, alias in ((s1, "stage1"), (s2, "stage2")):
        mv = tracking.get_model_version(REGISTERED_MODEL, alias=alias, tracking_uri=mlflow_server)
        assert alias in mv["aliases"] and mv["run_id"] == out["mlflow_run_id"]
        assert mv["tags"]["checkpoint_uri"] == out["export"]["uri"]
        assert mv["tags"]["sha256"] == sha256_file(f"{out['export']['uri']}/model.safetensors")
        assert mv["version"] == out["model_version"]
    # stage 2 started from the stage-1 export and changed the transformation net end to end
    m1, m2 = load_checkpoint(s1["export"]["uri"]), load_checkpoint(s2["export"]["uri"])
    w1 = m1.map_transformer.output_projs[0][3].weight
    w2 = m2.map_transformer.output_projs[0][3].weight
    assert 0 < (w1 - w2).abs().max().item() < 0.5

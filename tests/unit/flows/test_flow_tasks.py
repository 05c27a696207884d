"""The fast tier of the flows (STYLE G2: tasks through `.fn()`, no Prefect server, no Ray): the train-nsarm summary
and markdown builders, the register task without a tracking server, and build-dataset's manifest task on a real
dataset root of bundled photos (its MLflow task too, against the session's MLflow server: marked integration). The
flows themselves run end to end in tests/integration/train/test_train_flow.py and tests/e2e/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows import build_dataset as bd
from flows import train_nsarm as tn


def _stage_out(n: int, tmp_path: Path, *, run_id: str | None = "run%d", version: str | None = "%d") -> dict:
    """One stage's result as `nsarm.train.ray_trainer.run_stage` returns it (the keys the flow reads)."""
    return {"stage": n, "preset": "tiny", "run_name": f"tiny-stage{n}", "run_dir": str(tmp_path / f"s{n}"),
            "export": {"uri": str(tmp_path / f"s{n}" / "export"), "sha256": f"{n}" * 64},
            "metrics": {"train/loss": 0.5 / n, "step": 6}, "mlflow_run_id": run_id and run_id % n,
            "model_version": version and version % n, "tracking_uri": None}


SCORES = {"model": {"psnr": 22.164, "ssim": 0.61849}, "bicubic": {"psnr": 24.2149, "ssim": 0.58213},
          "keys": ["camera", "moon"]}
REGISTERED = {"name": "nsarm", "version": "2", "champion": True, "aliases": ["champion", "stage2"],
              "model_url": "http://127.0.0.1:5000/#/models/nsarm/versions/2",
              "run_urls": {"2": "http://127.0.0.1:5000/#/experiments/1/runs/run2"}}


def test_brief_is_what_the_flow_returns_per_stage(tmp_path):
    out = _stage_out(2, tmp_path)
    assert tn._brief(out) == {"run_name": "tiny-stage2", "run_dir": str(tmp_path / "s2"), "mlflow_run_id": "run2",
                              "model_version": "2", "checkpoint_uri": str(tmp_path / "s2" / "export"),
                              "sha256": "2" * 64, "loss": 0.25}


def test_markdown_summary_links_runs_versions_scores_and_model(tmp_path):
    md = tn.markdown_summary(_stage_out(1, tmp_path), _stage_out(2, tmp_path), SCORES, REGISTERED)
    rows = [line for line in md.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    # stage 1 has no run URL from the register step: its MLflow run id stands in; stage 2 links its run
    assert rows == [f"| 1 | tiny-stage1 | run1 | 1 | `{tmp_path / 's1' / 'export'}` | `{'1' * 16}…` |",
                    f"| 2 | tiny-stage2 | {REGISTERED['run_urls']['2']} | 2 | `{tmp_path / 's2' / 'export'}` | "
                    f"`{'2' * 16}…` |"]
    assert ("Held-out (2 images): PSNR-Y 22.16 dB (bicubic 24.21), SSIM-Y 0.6185 (bicubic 0.5821)") in md
    assert f"Registered model: [nsarm v2]({REGISTERED['model_url']}) aliases: champion, stage2" in md


def test_markdown_summary_without_scores_or_registry_says_so_with_dashes(tmp_path):
    """holdout=0 (no evaluate step) and no tracking server: no score line, no model line, '-' for the links."""
    first = _stage_out(1, tmp_path, run_id=None, version=None)
    second = _stage_out(2, tmp_path, run_id=None, version=None)
    md = tn.markdown_summary(first, second, {}, tn.register.fn(second, {}))
    assert f"| 2 | tiny-stage2 | - | - | `{tmp_path / 's2' / 'export'}` |" in md
    assert "Held-out" not in md and "Registered model" not in md


def test_register_task_without_a_tracking_server_registers_nothing(tmp_path):
    out = tn.register.fn(_stage_out(2, tmp_path, run_id=None, version=None), SCORES)
    assert out == {"name": "nsarm", "version": None, "champion": False, "aliases": []}


@pytest.fixture(scope="module")
def photo_root(sample_photos, tmp_path_factory):
    """3 bundled photos as a docs/DESIGN.md §3 dataset root (HR 256², LR 64², captions) in 2 shards, no Ray."""
    from nsarm.train.photo_dataset import build_photo_dataset

    root = tmp_path_factory.mktemp("flow-root")
    return build_photo_dataset([p.path for p in sample_photos[:3]], str(root), hr_size=256, shard_size=2)


def test_manifest_task_writes_the_manifest_with_the_build_summary(photo_root):
    summary = {"shard": {"successes": 3}, "degrade": {"deg_hash": photo_root["deg_hash"]}, "caption": {}}
    man = bd.manifest.fn(photo_root["root"], "fast-tier", summary)
    on_disk = json.loads((Path(photo_root["root"]) / "manifest.json").read_text())
    assert on_disk == man
    assert (man["name"], man["num_samples"], man["num_shards"]) == ("fast-tier", 3, 2)
    assert man["extra"] == {"build": summary}
    assert list(man["lr"]) == [photo_root["deg_hash"]] and list(man["captions"]) == [photo_root["cap_hash"]]


@pytest.mark.integration  # the session's real MLflow server (in a full run other tests have started it already)
def test_log_to_mlflow_task_records_the_dataset_run(photo_root, mlflow_server, monkeypatch):
    import mlflow

    uri = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    man = bd.manifest.fn(photo_root["root"], "fast-tier", {"shard": {}, "degrade": {}, "caption": {}})
    run_id = bd.log_to_mlflow.fn(photo_root["root"], man, "fast-tier-datasets")
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.run_name == f"build-{man['version']}" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "fast-tier-datasets"
    assert {k: run.data.params[k] for k in ("root", "dataset", "version")} == {
        "root": photo_root["root"], "dataset": "fast-tier", "version": man["version"]}
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == [f"fast-tier@{man['version']}"]
    assert "dataset/manifest.json" in [a.path for a in client.list_artifacts(run_id, "dataset")]

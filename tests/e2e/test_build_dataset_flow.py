"""build-dataset through the real deployment on the embedded stack (Prefect + Ray + MLflow), real photos over
local HTTP: the run completes, the dataset honours docs/DESIGN.md §3, and MLflow and the Prefect UI show it."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support.stack import prefect_api, run_deployment_cli

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def built_dataset(embedded_stack, sample_photos, photo_server, tmp_path_factory):
    """The tiny dataset built once through the deployment; shared by the e2e tests (train-nsarm uses it too)."""
    from dataset.samples import write_unsplash_tsv

    work = tmp_path_factory.mktemp("e2e-data")
    tsv = write_unsplash_tsv(sample_photos, photo_server.base_url, work / "photos.tsv")
    root = str(work / "root")
    run = run_deployment_cli(embedded_stack, "build-dataset/default",
                             {"source": str(tsv), "root": root, "preset": "tiny", "shard_size": 6,
                              "captioner": "metadata", "seed": 0})
    return {"run": run, "root": root, "tsv": tsv}


def test_build_dataset_deployment_completes_and_honours_contract(built_dataset, sample_photos):
    run, root = built_dataset["run"], Path(built_dataset["root"])
    assert run["state"]["type"] == "COMPLETED", run["state"].get("message")
    manifest = json.loads((root / "manifest.json").read_text())
    # 12 bundled photos, all >= 256 px on the short side: every one is a sample, in 2 shards of 6.
    assert manifest["num_samples"] == len(sample_photos) == 12
    assert manifest["hr"]["shards"] == [0, 1]
    (deg_hash, lr), = manifest["lr"].items()
    (cap_hash, caps), = manifest["captions"].items()
    assert lr["complete"] and caps["complete"]
    from dataset import contract

    for shard in (0, 1):
        hr = list(contract.iter_tar_samples(contract.hr_tar(str(root), shard)))
        lrs = list(contract.iter_tar_samples(contract.lr_tar(str(root), deg_hash, shard)))
        assert [k for k, _, _ in hr] == [k for k, _, _ in lrs]  # same keys, same order (lockstep)
        for (key, files, err), (_, lfiles, _) in zip(hr, lrs, strict=True):
            assert err is None and "." not in key
            assert Image.open(io.BytesIO(files["jpg"])).size == (256, 256)
            assert Image.open(io.BytesIO(lfiles["png"])).size == (64, 64)
            record = json.loads(lfiles["deg.json"])  # degradation/worker.py: {key, deg_hash, dataset_seed, params}
            assert (record["key"], record["deg_hash"], record["dataset_seed"]) == (key, deg_hash, 0)
            assert record["params"], f"{key}: no sampled degradation parameters"
        import pyarrow.parquet as pq

        captions = pq.read_table(contract.caption_parquet(str(root), cap_hash, shard)).to_pydict()
        assert sorted(captions["key"]) == sorted(k for k, _, _ in hr)
        assert all("photo" in c for c in captions["caption"])  # the Unsplash descriptions


def test_build_dataset_is_visible_in_mlflow_and_prefect(built_dataset, embedded_stack):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=embedded_stack.mlflow_url)
    manifest = json.loads((Path(built_dataset["root"]) / "manifest.json").read_text())
    runs = client.search_runs([client.get_experiment_by_name("nsarm-datasets").experiment_id],
                              filter_string=f"attributes.run_name = 'build-{manifest['version']}'")
    assert runs, f"no MLflow run build-{manifest['version']}"  # one per build of this version (a rerun adds one)
    for run in runs:
        assert run.data.params["version"] == manifest["version"]
        assert run.data.metrics["num_samples"] == manifest["num_samples"]
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == [f"nsarm-dataset@{manifest['version']}"]
        assert "dataset/manifest.json" in [a.path for a in client.list_artifacts(run.info.run_id, "dataset")]
    # the per-stage stats table is a markdown artifact on the flow run; its counts are the dataset's (a summary key
    # the table reads under an old name would print 0)
    arts = prefect_api(embedded_stack).post(f"{embedded_stack.prefect_url}/artifacts/filter",
                                            json={"artifacts": {"key": {"any_": ["build-dataset-stats"]}}}, timeout=10).json()
    mine = [a for a in arts if a["flow_run_id"] == built_dataset["run"]["id"]]
    assert len(mine) == 1, f"{len(mine)} build-dataset-stats artifacts on the flow run"
    rows = {line.split("|")[1].strip(): line for line in mine[0]["data"].splitlines() if line.startswith("| ")}
    n = manifest["num_samples"]
    assert f"{n} images ok" in rows["shard"] and f"{n} LR images" in rows["degrade"], mine[0]["data"]
    assert f"{n} captions" in rows["caption"], mine[0]["data"]


def test_rerun_resumes_without_duplicates(built_dataset, embedded_stack):
    """Rerunning the same build is the recovery path: it completes, skips every done shard, changes nothing."""
    root = Path(built_dataset["root"])
    before = {p.name: p.stat().st_mtime_ns for p in (root / "hr").glob("*.tar")}
    run = run_deployment_cli(embedded_stack, "build-dataset/default",
                             {"source": str(built_dataset["tsv"]), "root": str(root), "preset": "tiny",
                              "shard_size": 6, "captioner": "metadata", "seed": 0})
    assert run["state"]["type"] == "COMPLETED", run["state"].get("message")
    assert {p.name: p.stat().st_mtime_ns for p in (root / "hr").glob("*.tar")} == before
    assert json.loads((root / "manifest.json").read_text())["num_samples"] == 12

"""Headless Chromium screenshots of the session's embedded stack after both deployments ran: the Prefect UI lists
both deployments and their completed runs, the MLflow registry shows model `nsarm` with its champion version and
aliases, the Ray dashboard lists the flows' jobs — checked in the captured visible text, the DOM and the pixels.

Marked `last`: in the full suite it looks at the runs the build-dataset e2e test and the train-flow integration test
left on the same session stack; run alone, `completed_runs` starts the two (tiny, short) runs itself.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support.stack import prefect_api, run_deployment_cli

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow, pytest.mark.last]

DEPLOYMENTS = ("build-dataset", "train-nsarm")


def _need_browser():
    pytest.importorskip("playwright", reason="Python package playwright missing: pip install -e '.[dev]'")
    from nsarm.screenshots import ScreenshotError, find_chromium

    try:
        find_chromium()
    except ScreenshotError as e:
        pytest.skip(f"Debian package chromium missing: {e}")


def _completed_runs(cfg) -> dict[str, list[dict]]:
    """Completed flow runs per flow name of the two deployments, newest first (Prefect REST API)."""
    api = prefect_api(cfg)
    runs = api.post(f"{cfg.prefect_url}/flow_runs/filter", timeout=10, json={
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}, "deployment_id": {"is_null_": False}},
        "sort": "START_TIME_DESC", "limit": 50}).json()
    flows = {f["id"]: f["name"] for f in api.post(f"{cfg.prefect_url}/flows/filter", json={}, timeout=10).json()}
    by_flow = {name: [] for name in DEPLOYMENTS}
    for run in runs:
        if flows.get(run["flow_id"]) in by_flow:
            by_flow[flows[run["flow_id"]]].append(run)
    return by_flow


@pytest.fixture(scope="module")
def completed_runs(embedded_stack, sample_photos, photo_server, tmp_path_factory):
    """Both deployments have at least one completed run on the session stack: the earlier tests' runs when the
    suite made them, else a tiny build-dataset and a 6 + 6-step train-nsarm started here."""
    cfg = embedded_stack
    runs = _completed_runs(cfg)
    if not runs["build-dataset"]:
        from dataset.samples import write_unsplash_tsv

        work = tmp_path_factory.mktemp("ui-data")
        tsv = write_unsplash_tsv(sample_photos, photo_server.base_url, work / "photos.tsv")
        run = run_deployment_cli(cfg, "build-dataset/default", {"source": str(tsv), "root": str(work / "root"),
                                                                "preset": "tiny", "shard_size": 6,
                                                                "captioner": "metadata", "seed": 0})
        assert run["state"]["type"] == "COMPLETED", run["state"].get("message")
        runs = _completed_runs(cfg)
    if not runs["train-nsarm"]:
        small = {"steps": 6, "checkpoint_every": 3, "image_every": 6}
        run = run_deployment_cli(cfg, "train-nsarm/default", {
            "root": runs["build-dataset"][0]["parameters"]["root"], "preset": "tiny", "num_workers": 2,
            "use_gpu": False, "stage1": small, "stage2": small, "holdout": 2, "tokenizer_steps": 10,
            "storage_path": str(tmp_path_factory.mktemp("ui-runs"))}, timeout=1800)
        assert run["state"]["type"] == "COMPLETED", run["state"].get("message")
        runs = _completed_runs(cfg)
    return runs


@pytest.fixture(scope="module")
def shots(completed_runs, embedded_stack, tmp_path_factory):
    _need_browser()
    from nsarm.screenshots import capture_stack

    out = tmp_path_factory.mktemp("screenshots")
    return {s.page.name: s for s in capture_stack(embedded_stack, out, timeout_s=90)}


def _assert_real_rendering(shot, height=800):
    img = Image.open(shot.png)
    img.load()  # decodes the whole PNG
    assert img.size == (1280, height), f"{shot.png}: {img.size}"
    px = np.asarray(img.convert("RGB")).astype(np.int32)  # (H, W, 3)
    # Not a blank or single-colour page: text and widgets give a spread of values and many distinct colours.
    assert px.std() > 10, f"{shot.png} looks blank (pixel std {px.std():.1f})"
    colours = np.unique((px[..., 0] << 16) | (px[..., 1] << 8) | px[..., 2])
    assert len(colours) > 50, f"{shot.png} has too few colours ({len(colours)})"


def test_prefect_deployments_page_shows_both_deployments(shots, embedded_stack):
    shot = shots["prefect-deployments"]
    assert "Can't connect" not in shot.text
    for flow in DEPLOYMENTS:
        assert flow in shot.text
    api = prefect_api(embedded_stack)
    deployments = api.post(f"{embedded_stack.prefect_url}/deployments/filter", json={}, timeout=10).json()
    assert len(deployments) == 2
    for dep in deployments:  # each row links to its deployment page
        assert f"/deployments/deployment/{dep['id']}" in shot.html
    assert re.search(r"\b2 Deployments\b", shot.text)
    # Each row's activity sparkline has a bar for a completed run.
    assert len(re.findall(r'class="[^"]*bg-state-completed[^"]*bar-flow-run', shot.html)) >= 2
    _assert_real_rendering(shot)


def test_prefect_runs_page_shows_completed_runs_of_both(shots, completed_runs):
    shot = shots["prefect-flow-runs"]
    assert "Can't connect" not in shot.text
    for flow in DEPLOYMENTS:
        newest = completed_runs[flow][0]
        # "<flow> > <run name>" and the run's page link: the newest completed run of each deployment is listed.
        assert flow in shot.text and newest["name"] in shot.text, f"{flow} run {newest['name']} not on the page"
        assert f"/runs/flow-run/{newest['id']}" in shot.html
    assert "Completed" in shot.text
    _assert_real_rendering(shot, height=1200)


def test_mlflow_registry_page_shows_version_and_aliases(shots, embedded_stack):
    shot = shots["mlflow-model"]
    answer = requests.get(f"{embedded_stack.mlflow_url}/api/2.0/mlflow/registered-models/alias",
                          params={"name": "nsarm", "alias": "champion"}, timeout=10).json()
    version = answer["model_version"]["version"]
    aliases = {a["alias"]: a["version"] for a in
               requests.get(f"{embedded_stack.mlflow_url}/api/2.0/mlflow/registered-models/get",
                            params={"name": "nsarm"}, timeout=10).json()["registered_model"]["aliases"]}
    assert {"champion", "stage1", "stage2"} <= set(aliases)
    assert f"Version {version}" in shot.text
    for alias in ("champion", "stage2"):
        assert alias in shot.text
    # The version row links to the version's own page.
    assert re.search(rf"#/models/nsarm/versions/{version}\b", shot.html)
    _assert_real_rendering(shot)


def test_ray_jobs_page_lists_the_flows_jobs(shots, embedded_stack):
    shot = shots["ray-jobs"]
    token = embedded_stack.ray_token_path.read_text().strip()
    jobs = requests.get(f"{embedded_stack.ray_dashboard}/api/jobs/", timeout=10,
                        headers={"Authorization": f"Bearer {token}"}).json()
    assert jobs, "Ray knows no jobs"
    assert "Job List" in shot.text
    rows = re.findall(r"<tr[^>]*>", shot.html.split("<tbody", 1)[1])
    assert len(rows) >= 1
    # At least one of Ray's jobs (the flows' Ray drivers) is listed with its id and status.
    listed = [j for j in jobs if j.get("job_id") and j["job_id"] in shot.text]
    assert listed, f"none of {[j.get('job_id') for j in jobs]} on the page"
    assert any(j["status"] in shot.text for j in listed)
    _assert_real_rendering(shot)


def test_unanswering_ui_is_a_clear_error(tmp_path):
    _need_browser()
    from nsarm.screenshots import Page, ScreenshotError, capture
    from tests.support.services import free_port

    url = f"http://127.0.0.1:{free_port()}/#/jobs"
    with pytest.raises(ScreenshotError, match=re.escape(url)):
        capture([Page("nothing", url, expect=("Job List",))], tmp_path, timeout_s=10)


def test_missing_chromium_names_the_package(tmp_path, monkeypatch):
    from nsarm.screenshots import BrowserMissing, find_chromium

    monkeypatch.setenv("NSARM_CHROMIUM", str(tmp_path / "no-such-browser"))
    with pytest.raises(BrowserMissing, match="no-such-browser is not a file.*apt-get install -y chromium"):
        find_chromium()
    monkeypatch.delenv("NSARM_CHROMIUM")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrowserMissing, match="no Chromium found on PATH.*apt-get install -y chromium"):
        find_chromium()
    assert shutil.which("chromium") is None

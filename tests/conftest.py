"""Shared pytest fixtures: bundled real photos, a local photo HTTP server, a local Ray cluster, a moto S3 server.

Service fixtures are session-scoped so the suite starts each service at most once (2-core CI budget). Fixtures only:
the helpers tests import are in tests/support/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nsarm.compat import ensure_torchvision_importable
from tests.support.services import free_port, stop_group, wait_http
from tests.support.stack import stack_processes

# pytest is an entry point: tests import torchvision, BasicSR, pyiqa and lpips themselves (nsarm/compat.py)
ensure_torchvision_importable()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    # Tests marked `last` look at what the others left on the session stack (the UI screenshots): run them last.
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> list:
    """The bundled real photographs (list of dataset.samples.SamplePhoto), exported to a session temp folder."""
    from dataset.samples import export_sample_photos

    return export_sample_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def photo_server(sample_photos):
    """A PhotoServer on 127.0.0.1 serving the sample photos; `.url(name)` gives a photo's URL."""
    from dataset.httpserve import PhotoServer

    with PhotoServer(sample_photos[0].path.parent) as srv:
        yield srv


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster (num_cpus=2, no dashboard) for the whole session; tests call ray APIs directly."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


SERVICE_ENV = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "RAY_ADDRESS")


@pytest.fixture(autouse=True)
def _no_leaked_service_env():
    """Each test leaves the service variables as it found them. `mlflow.set_tracking_uri` (nsarm.tracking, some
    tests) also writes MLFLOW_TRACKING_URI into the environment; left behind, a later test's "local" stack took
    MLflow for external and a later training run called a server that had already stopped."""
    saved = {k: os.environ.get(k) for k in SERVICE_ENV}
    yield
    if "mlflow" in sys.modules and os.environ.get("MLFLOW_TRACKING_URI") != saved["MLFLOW_TRACKING_URI"]:
        import mlflow

        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None: MLflow's default again
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    """A real moto S3 server on 127.0.0.1; yields its endpoint URL and sets the AWS_* variables for s3fs/boto3."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        wait_http(endpoint + "/moto-api/", timeout=30)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(moto_s3):
    """A fresh bucket on the moto server; yields 's3://<bucket>'."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory):
    """The real embedded stack (`nsarm stack up`) on free ports with a temp state dir, for the whole session.

    Yields the StackConfig; its `client_env()` has PREFECT_API_URL / MLFLOW_TRACKING_URI / RAY_ADDRESS. On teardown
    the stack is stopped and the fixture fails if any of its processes survive.
    """
    from nsarm import processes, stack

    state = tmp_path_factory.mktemp("stack")
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        os.environ.pop(k, None)
    cfg = stack.StackConfig.from_env(state_dir=state, prefect_port=free_port(), mlflow_port=free_port(),
                                     ray_port=free_port(), ray_dashboard_port=free_port(),
                                     ray_client_port=free_port(), ray_cpus=2)
    try:
        stack.up(cfg)
        yield cfg
    finally:
        pids = stack_processes(cfg)
        stack.down(cfg)
        time.sleep(1)
        leftover = [p for p in pids if processes.alive(p)]
        assert not leftover, f"stack processes still alive after down: {leftover}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend store, served artifacts) on a free 127.0.0.1 port for the session;
    yields its URI and stops its process group at the end. Tests keep apart by experiment name."""
    state = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(state / "server.log", "w")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{state}/mlflow.db",
         "--artifacts-destination", str(state / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", timeout=120)
        yield uri
    finally:
        stop_group(proc, grace=30)
        log.close()


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test, restored afterwards: tiny models do microsecond-sized kernels, and
    two spinning OpenMP threads on a busy 2-core box make them 10-40× slower. Folders of tiny-model tests use it
    with an autouse wrapper in their conftest."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""A real MLflow tracking server (SQLite backend, served artifacts) on 127.0.0.1 for the evaluation tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import nsarm  # noqa: F401  (torchvision shim before basicsr)
from tests.conftest import free_port, wait_http


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """Start `mlflow server` in a fresh folder; yields its URI and stops it (by PID) afterwards."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
         "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", timeout=120)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

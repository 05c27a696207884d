"""Fixtures of the training integration tests: a dataset root of real photos, shared run storage, a real MLflow
server process (SQLite backend, served artifacts) on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="session")
def train_root(sample_photos, tmp_path_factory):
    """10 real photos as a DESIGN §3 dataset root (HR 256² JPEG, LR 64² PNG, captions), 2 shards; the other 2
    photos stay held out for evaluation."""
    from dataset.manifest import write_manifest
    from nsarm.train.photo_dataset import build_photo_dataset

    root = tmp_path_factory.mktemp("train-root")
    info = build_photo_dataset([p.path for p in sample_photos[:10]], str(root), hr_size=256, shard_size=6)
    info["manifest"] = write_manifest(str(root), name="train-test-photos")
    return info


@pytest.fixture(scope="session")
def run_storage(tmp_path_factory):
    """Ray Train storage shared by the tests (its _cache/ keeps encoded latents between runs)."""
    return str(tmp_path_factory.mktemp("train-runs"))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free port; yields its URI and stops the process group at the end."""
    state = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(state / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{state}/mlflow.db",
         "--artifacts-destination", str(state / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", timeout=120)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)

"""infra/cluster.env.example is the one environment of the cluster: well-formed, complete, and spelled the way the
package and the manifests spell it. Also the MLflow start script's refusals of bad configuration."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.infra_files import ENV_EXAMPLE, INFRA, LAUNCHER, REPO, START_MLFLOW, parse_env_file

PACKAGES = ("nsarm", "dataset", "degradation", "captioning", "flows")
SERVICE_VARS = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL")
RUNBOOK = REPO / "docs" / "runbook.md"


def _package_source() -> str:
    return "\n".join(p.read_text() for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_env_example_names_every_service_and_store(cluster_env):
    required = {*SERVICE_VARS, "NSARM_DATA_ROOT", "NSARM_STORAGE", "NSARM_IMAGE"}
    assert required <= set(cluster_env), f"missing from {ENV_EXAMPLE.name}: {required - set(cluster_env)}"
    assert re.fullmatch(r"https?://[^/\s]+", cluster_env["MLFLOW_TRACKING_URI"])
    assert re.fullmatch(r"https?://[^/\s]+/api", cluster_env["PREFECT_API_URL"]), "Prefect's API URL ends in /api"
    assert cluster_env["RAY_ADDRESS"] in ("auto",) or re.fullmatch(r"(ray://)?[\w.-]+:\d+", cluster_env["RAY_ADDRESS"])
    for key in ("NSARM_DATA_ROOT", "NSARM_STORAGE"):
        assert re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[\w./-]+", cluster_env[key]), (
            f"{key} must be s3://bucket/prefix (S3 bucket naming): {cluster_env[key]}")
    # No credentials in a file meant to be copied around (they come from a Secret or the node's role).
    assert not {k for k in cluster_env if "SECRET" in k or k == "AWS_ACCESS_KEY_ID" or "PASSWORD" in k}


def test_service_variables_are_the_ones_the_package_reads():
    source = _package_source()
    for var in SERVICE_VARS:
        assert re.search(rf"['\"]{var}['\"]", source), f"no package module reads {var}; rename in {ENV_EXAMPLE.name}?"


def test_every_nsarm_variable_mentioned_is_defined_or_read():
    """A typo (NSARM_DATAROOT) in a manifest or the runbook would silently point a node at nothing."""
    defined = set(parse_env_file(ENV_EXAMPLE)) | set(re.findall(r"\bNSARM_[A-Z0-9_]+\b", _package_source()))
    docs = [p for p in INFRA.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".md", ".sh", ".json", "")]
    docs += [RUNBOOK] if RUNBOOK.exists() else []
    unknown = {}
    for path in docs:
        for name in set(re.findall(r"\bNSARM_[A-Z0-9_]+\b", path.read_text(errors="replace"))) - defined:
            unknown.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert not unknown, f"NSARM_* names neither in {ENV_EXAMPLE.name} nor read by the package: {unknown}"


def test_launcher_commands_use_only_defined_variables(launcher, cluster_env):
    # RAY_HEAD_IP is substituted by the Ray autoscaler in worker commands; HOME is the shell's.
    provided = set(cluster_env) | {"RAY_HEAD_IP", "HOME"}
    text = LAUNCHER.read_text()
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))
    assert used and used <= provided, f"undefined in {LAUNCHER.name}: {used - provided}"


def _run_script(env: dict[str, str]) -> subprocess.CompletedProcess:
    # PATH without the venv: if validation let a bad value through, `mlflow` would not even be found (rc 127).
    clean = {"PATH": "/usr/bin:/bin", **env}
    return subprocess.run(["bash", str(START_MLFLOW)], env=clean, capture_output=True, text=True, timeout=30)


GOOD = {"MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://mlflow:pw@db:5432/mlflow",
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://nsarm-prod/mlflow-artifacts"}


@pytest.mark.parametrize("env, message", [
    ({"MLFLOW_ARTIFACTS_DESTINATION": GOOD["MLFLOW_ARTIFACTS_DESTINATION"]}, "set MLFLOW_BACKEND_STORE_URI"),
    ({"MLFLOW_BACKEND_STORE_URI": GOOD["MLFLOW_BACKEND_STORE_URI"]}, "set MLFLOW_ARTIFACTS_DESTINATION"),
    ({**GOOD, "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:pw@db/mlflow"}, "postgresql+psycopg2:// driver"),
    ({**GOOD, "MLFLOW_BACKEND_STORE_URI": "sqlite:///mlflow.db"}, "got 'sqlite://…'"),
    ({**GOOD, "MLFLOW_ARTIFACTS_DESTINATION": "/srv/mlartifacts"}, "s3://bucket/prefix URI (got '/srv/mlartifacts')"),
], ids=["no-backend", "no-artifacts", "psycopg3-url", "sqlite", "local-artifacts"])
def test_start_script_refuses_bad_configuration(env, message):
    res = _run_script(env)
    assert res.returncode != 0 and res.returncode != 127, res
    assert message in res.stderr, res.stderr
    assert "pw@" not in res.stderr, "the database password leaked into the log"


def test_start_script_accepts_the_recipe_and_hides_the_password(tmp_path):
    # A fake `mlflow` on PATH records the arguments the script would run the server with.
    fake = tmp_path / "mlflow"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / "args"
    env = {**GOOD, "MLFLOW_PORT": "5123", "MLFLOW_ALLOWED_HOSTS": "mlflow.nsarm.svc.cluster.local:5000",
           "ARGS_OUT": str(out), "PATH": f"{tmp_path}{os.pathsep}/usr/bin:/bin"}
    res = subprocess.run(["bash", str(START_MLFLOW)], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "pw@" not in res.stderr
    assert Path(out).read_text().split("\n")[:-1] == [
        "server", "--backend-store-uri", GOOD["MLFLOW_BACKEND_STORE_URI"],
        "--artifacts-destination", GOOD["MLFLOW_ARTIFACTS_DESTINATION"], "--serve-artifacts",
        "--host", "0.0.0.0", "--port", "5123", "--workers", "4",
        "--allowed-hosts", "mlflow.nsarm.svc.cluster.local:5000"]

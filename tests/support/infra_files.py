"""Paths of the cluster manifests in infra/ and small loaders for them (parsed, never applied)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
ENV_EXAMPLE = INFRA / "cluster.env.example"
LAUNCHER = INFRA / "cluster" / "ray-cluster.yaml"
RAYCLUSTER = INFRA / "cluster" / "kuberay-raycluster.yaml"
RAYJOB = INFRA / "cluster" / "kuberay-rayjob.yaml"
PREFECT = INFRA / "prefect" / "prefect.yaml"
WORK_POOL = INFRA / "prefect" / "work-pool.json"
MLFLOW_K8S = INFRA / "mlflow" / "mlflow-k8s.yaml"
START_MLFLOW = INFRA / "mlflow" / "start-mlflow.sh"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
CONSTRAINTS = INFRA / "docker" / "constraints.txt"

# No quotes, `$` or `export`: the same file feeds `set -a; . file`, docker --env-file and kubectl --from-env-file,
# which agree only on plain KEY=value.
_ENV_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=([^\s\"'$`]*)$")


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (comments and blanks skipped); anything else is an error naming the line."""
    env: dict[str, str] = {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        if not m:
            raise ValueError(f"{path}:{no}: not a plain KEY=value line: {line!r}")
        if m.group(1) in env:
            raise ValueError(f"{path}:{no}: {m.group(1)} defined twice")
        env[m.group(1)] = m.group(2)
    return env


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def walk(node, path=()):
    """Yield (path, value) for every scalar in a parsed YAML/JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, (*path, i))
    else:
        yield path, node


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(label, RayCluster spec) of the long-lived cluster and of the RayJob's own cluster."""
    rc = one(load_docs(RAYCLUSTER), "RayCluster")
    rj = one(load_docs(RAYJOB), "RayJob")
    return [("RayCluster", rc["spec"]), ("RayJob.rayClusterSpec", rj["spec"]["rayClusterSpec"])]



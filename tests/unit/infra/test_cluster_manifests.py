"""The cluster manifests agree with each other, with infra/cluster.env.example and with the package.

Shape: 1 CPU head + 2 nodes × 8 GPUs = 16 GPUs (the paper's training setup). Parsed with PyYAML, never applied.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest

from tests.support.infra_files import (
    CONSTRAINTS,
    ENV_EXAMPLE,
    INFRA,
    LAUNCHER,
    MLFLOW_K8S,
    RAYCLUSTER,
    RAYJOB,
    REPO,
    containers,
    load_docs,
    one,
    ray_cluster_specs,
    walk,
)

TOTAL_GPUS = 16
GPUS_PER_NODE = 8
K8S_MANIFESTS = [RAYCLUSTER, RAYJOB, MLFLOW_K8S]


def _bucket(uri: str) -> str:
    assert uri.startswith("s3://"), f"not an s3:// URI: {uri}"
    return uri.removeprefix("s3://").split("/", 1)[0]


def test_launcher_config_passes_rays_own_validation(launcher):
    # What `ray up` does before touching the cloud: merge the provider defaults, check the schema and node types.
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_path = Path(importlib.util.find_spec("ray").submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    jsonschema.validate(launcher, json.loads(schema_path.read_text()))  # as written, before defaults fill gaps
    validate_config(prepare_config(copy.deepcopy(launcher)))


def test_launcher_has_sixteen_gpus_on_two_nodes(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert sum(t["min_workers"] * t["resources"]["GPU"] for t in gpu_types.values()) == TOTAL_GPUS
    for name, t in gpu_types.items():
        assert t["resources"]["GPU"] == GPUS_PER_NODE, name
        assert t["min_workers"] == t["max_workers"], f"{name}: training gang-schedules all GPUs; fixed size expected"
    assert launcher["max_workers"] == sum(t["max_workers"] for t in types.values())
    # `ray start` on the workers advertises the same GPU count the autoscaler plans with.
    worker_cmds = " ".join(launcher["worker_start_ray_commands"])
    assert f"--num-gpus={GPUS_PER_NODE}" in worker_cmds


@pytest.mark.parametrize("label, spec", ray_cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_has_sixteen_gpus_on_two_pods(label, spec):
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0", f"{label}: head must not offer GPUs"
    for c in containers(head["template"]):
        assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), f"{label}: GPU on the head"
    total = 0
    for group in spec["workerGroupSpecs"]:
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"], f"{label}/{group['groupName']}"
        (worker,) = [c for c in containers(group["template"]) if c["name"] == "ray-worker"]
        res = worker["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == GPUS_PER_NODE
        total += group["replicas"] * res["limits"]["nvidia.com/gpu"]
    assert total == TOTAL_GPUS, f"{label}: {total} GPUs"


def test_raycluster_and_rayjob_have_the_same_shape():
    (_, rc), (_, rj) = ray_cluster_specs()

    def shape(spec):
        groups = {g["groupName"]: (g["replicas"], [c["resources"] for c in containers(g["template"])])
                  for g in spec["workerGroupSpecs"]}
        return spec["rayVersion"], spec["headGroupSpec"]["rayStartParams"], groups

    assert shape(rc) == shape(rj)


def test_one_image_tag_everywhere(cluster_env, launcher, pyproject):
    image = cluster_env["NSARM_IMAGE"]
    version = pyproject["project"]["version"]
    assert image.rsplit(":", 1)[1].startswith(f"{version}-"), f"image tag of {image} must start with {version}-"
    seen = {f"{LAUNCHER.name}:docker.{k}": v for k, v in launcher["docker"].items() if k.endswith("image")}
    for path in K8S_MANIFESTS:
        for doc in load_docs(path):
            for where, value in walk(doc):
                if where and where[-1] == "image" and not str(value).startswith("postgres:"):
                    seen[f"{path.name}:{'.'.join(map(str, where))}"] = value
    assert len(seen) >= 8, seen
    wrong = {k: v for k, v in seen.items() if v != image}
    assert not wrong, f"images differing from NSARM_IMAGE={image}: {wrong}"


def test_ray_version_is_the_pinned_ray():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", CONSTRAINTS.read_text(), re.M))
    for label, spec in ray_cluster_specs():
        assert spec["rayVersion"] == pins["ray"], f"{label}.rayVersion {spec['rayVersion']} != ray=={pins['ray']}"


def test_configmap_is_the_env_example(cluster_env):
    cm = one(load_docs(RAYCLUSTER), "ConfigMap", "nsarm-cluster-env")
    assert {k: str(v) for k, v in cm["data"].items()} == cluster_env, (
        f"ConfigMap nsarm-cluster-env in {RAYCLUSTER.name} drifted from {ENV_EXAMPLE.name}")
    # Every Ray and Prefect container of both manifests reads it.
    for label, spec in ray_cluster_specs():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for g in groups:
            for c in containers(g["template"]):
                refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
                assert refs == ["nsarm-cluster-env"], f"{label}/{c['name']} does not load nsarm-cluster-env"


def test_launcher_sources_the_env_file_before_every_start(launcher):
    sources = {target: src for target, src in launcher["file_mounts"].items() if src.endswith("cluster.env")}
    assert list(sources.values()) == [str(ENV_EXAMPLE.relative_to(REPO)).removesuffix(".example")]
    (target,) = sources
    starts = [c for c in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
              if "ray start" in c or "prefect worker" in c]
    assert len(starts) == 3, starts  # head ray, prefect worker, worker ray
    for cmd in starts:
        assert f"set -a && . {target} && set +a" in cmd, f"does not load {target} first: {cmd}"


def test_storage_paths_are_consistent(cluster_env):
    data_root, storage = cluster_env["NSARM_DATA_ROOT"], cluster_env["NSARM_STORAGE"]
    bucket = _bucket(data_root)
    assert _bucket(storage) == bucket
    # Neither may contain the other: a dataset rebuild must never touch checkpoints and vice versa.
    assert not data_root.startswith(storage) and not storage.startswith(data_root)
    uris = []
    for path in [*K8S_MANIFESTS, LAUNCHER, INFRA / "prefect" / "prefect.yaml"]:
        uris += [(path.name, u) for u in re.findall(r"s3://[^\s'\",)]+", path.read_text())]
    assert uris
    assert {u for _, u in uris if _bucket(u) != bucket} == set(), f"URIs outside bucket {bucket}: {uris}"
    mlflow_env = {e["name"]: e.get("value") for e in
                  containers(one(load_docs(MLFLOW_K8S), "Deployment", "mlflow")["spec"]["template"])[0]["env"]}
    artifacts = mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"]
    for other in (data_root, storage):
        assert not artifacts.startswith(other) and not other.startswith(artifacts)


def test_shared_volume_is_mounted_where_the_env_points(cluster_env, launcher):
    shared = Path(cluster_env["NSARM_WEIGHTS_DIR"]).parent
    for key in ("NSARM_WEIGHTS_DIR", "NSARM_IQA_WEIGHTS", "HF_HOME"):
        assert Path(cluster_env[key]).is_relative_to(shared), f"{key}={cluster_env[key]} not under {shared}"
    assert f"-v {shared}:{shared}" in launcher["docker"]["run_options"]
    assert any(str(shared) in c for c in launcher["initialization_commands"] if "mount " in c)
    pvc = one(load_docs(RAYCLUSTER), "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for label, spec in ray_cluster_specs():
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = g["template"]["spec"]
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                      if "persistentVolumeClaim" in v}
            for c in pod["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                assert claims.get(mounts.get(str(shared))) == pvc["metadata"]["name"], (
                    f"{label}/{c['name']}: {shared} is not the {pvc['metadata']['name']} volume")


def test_dashboard_is_for_operators_only(launcher):
    head_start = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    ingress = launcher["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in ingress] == [(22, 22)], "only SSH may reach the launcher's nodes"
    for path in K8S_MANIFESTS:
        docs = load_docs(path)
        assert not [d for d in docs if d["kind"] == "Ingress"], f"{path.name}: no Ingress for operator-only UIs"
        exposed = [(path.name, w) for d in docs for w, v in walk(d)
                   if w and w[-1] in ("serviceType", "type") and v in ("LoadBalancer", "NodePort")]
        assert not exposed, exposed
    for label, spec in ray_cluster_specs():
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", label
    policy = one(load_docs(RAYCLUSTER), "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/node-type": "head"}
    dashboard_rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == 8265 for p in r.get("ports", []))]
    assert len(dashboard_rules) == 1
    (peer,) = dashboard_rules[0]["from"]
    allowed = peer["podSelector"]["matchLabels"]
    # The only other rule admits Ray's own pods (they need every port); nothing admits all pods.
    others = [r for r in policy["spec"]["ingress"] if r is not dashboard_rules[0]]
    assert [r["from"] for r in others] == [[{"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}}]]
    # The RayJob submitter talks to the dashboard's job API: it must carry the allowed label.
    submitter = one(load_docs(RAYJOB), "RayJob")["spec"]["submitterPodTemplate"]
    assert allowed.items() <= submitter["metadata"]["labels"].items()


def test_everything_lives_in_one_namespace(cluster_env):
    namespaces = {(p.name, d["kind"]): d["metadata"].get("namespace") for p in K8S_MANIFESTS for d in load_docs(p)}
    assert set(namespaces.values()) == {"nsarm"}, namespaces
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        assert ".nsarm.svc.cluster.local:" in cluster_env[key], key


def test_mlflow_service_is_where_the_env_points(cluster_env):
    docs = load_docs(MLFLOW_K8S)
    m = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", cluster_env["MLFLOW_TRACKING_URI"])
    assert m, cluster_env["MLFLOW_TRACKING_URI"]
    name, ns, port = m.group(1), m.group(2), int(m.group(3))
    svc = one(docs, "Service", name)
    assert svc["metadata"]["namespace"] == ns and [p["port"] for p in svc["spec"]["ports"]] == [port]
    deploy = one(docs, "Deployment", name)
    (c,) = containers(deploy["spec"]["template"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MLFLOW_PORT"] == str(port)
    # MLflow 3 refuses Host headers it does not know: the name clients use must be allowed.
    host = cluster_env["MLFLOW_TRACKING_URI"].removeprefix("http://")
    assert host in env["MLFLOW_ALLOWED_HOSTS"].split(",")
    # Its backend is the PostgreSQL service of the same file, through the psycopg2 driver.
    pg = one(docs, "Service", "mlflow-postgres")
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert f"@{pg['metadata']['name']}.{ns}.svc.cluster.local:{pg['spec']['ports'][0]['port']}/" in \
        env["MLFLOW_BACKEND_STORE_URI"]
    # It runs the recipe script that the integration test exercises.
    assert c["command"] == [f"/opt/nsarm/{START_MLFLOW_REL}"]


START_MLFLOW_REL = "infra/mlflow/start-mlflow.sh"


def test_mlflow_manifest_sets_only_variables_the_script_reads():
    script = (REPO / START_MLFLOW_REL).read_text()
    read = set(re.findall(r"\$\{?(MLFLOW_[A-Z_]+)", script))
    deploy = one(load_docs(MLFLOW_K8S), "Deployment", "mlflow")
    (c,) = containers(deploy["spec"]["template"])
    names = {e["name"] for e in c["env"] if e["name"].startswith("MLFLOW_")}
    # MLFLOW_SERVER_ENABLE_JOB_EXECUTION is read by MLflow itself, not by the script.
    unknown = names - read - {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}
    assert not unknown, f"set in {MLFLOW_K8S.name} but never read by start-mlflow.sh: {unknown}"
    assert {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"} <= names


def test_shell_commands_in_the_launcher_parse(launcher):
    # A stray quote in a folded YAML command only shows up on the head node otherwise.
    for key in ("initialization_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in launcher[key]:
            shlex.split(cmd)

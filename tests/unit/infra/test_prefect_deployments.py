"""infra/prefect/prefect.yaml agrees with flows/ (read with `ast`, never imported), the cluster and the image.

Deployment names are `<flow name>/<deployment>`; the flow name is the function name with `_` → `-` unless
`@flow(name=…)` says otherwise, and users type `build-dataset/default` and `train-nsarm/default`.
"""

from __future__ import annotations

import ast
import json
import re
import shlex

import pytest

from tests.support.infra_files import (
    DOCKERFILE,
    LAUNCHER,
    RAYCLUSTER,
    RAYJOB,
    REPO,
    WORK_POOL,
    containers,
    load_docs,
    one,
)

FLOWS = {"build-dataset": "build_dataset", "train-nsarm": "train_nsarm"}  # deployment flow name → function
TOTAL_GPUS = 16


def _deployments(prefect_cfg) -> dict[str, dict]:
    """flow function name → deployment, from the entrypoint `flows/<file>.py:<function>`."""
    out = {}
    for d in prefect_cfg["deployments"]:
        path, func = d["entrypoint"].split(":")
        assert func not in out, f"two deployments of {func}"
        out[func] = d
    return out


def _flow_def(func: str, flows_dir=REPO / "flows") -> ast.FunctionDef:
    """The top-level `def func` in flows/func.py; a missing file fails (a deployment would point at nothing)."""
    path = flows_dir / f"{func}.py"
    if not path.is_file():
        raise AssertionError(f"{path} is missing: prefect.yaml's entrypoint flows/{func}.py:{func} would not load")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            return node
    raise AssertionError(f"{path} has no top-level function {func}")


def _flow_name(fn: ast.FunctionDef) -> str:
    """The Prefect flow name a `@flow` / `@flow(name=…)` decorator gives `fn`."""
    for dec in fn.decorator_list:
        call = dec if isinstance(dec, ast.Call) else None
        target = call.func if call else dec
        if (isinstance(target, ast.Name) and target.id == "flow") or (
                isinstance(target, ast.Attribute) and target.attr == "flow"):
            for kw in call.keywords if call else []:
                if kw.arg == "name":
                    return ast.literal_eval(kw.value)
            return fn.name.replace("_", "-")
    raise AssertionError(f"{fn.name} is not decorated with @flow")


def _defaults(fn: ast.FunctionDef) -> dict[str, object]:
    """Argument name → literal default (or `...` when it has none / it is not a literal)."""
    args = fn.args.args + fn.args.kwonlyargs
    defaults = [None] * (len(fn.args.args) - len(fn.args.defaults)) + fn.args.defaults + fn.args.kw_defaults
    out = {}
    for arg, default in zip(args, defaults, strict=True):
        try:
            out[arg.arg] = ast.literal_eval(default) if default is not None else ...
        except ValueError:
            out[arg.arg] = ...
    return out


def test_two_default_deployments_with_entrypoints_named_after_the_flows(prefect_cfg):
    deps = _deployments(prefect_cfg)
    assert set(deps) == set(FLOWS.values())
    for func, d in deps.items():
        assert d["name"] == "default"
        assert d["entrypoint"] == f"flows/{func}.py:{func}"


@pytest.mark.parametrize("flow_name, func", FLOWS.items())
def test_entrypoint_functions_are_flows_with_the_documented_names(flow_name, func):
    fn = _flow_def(func)
    assert _flow_name(fn) == flow_name, f"`prefect deployment run {flow_name}/default` would not find it"


def test_a_missing_flow_file_fails_instead_of_skipping(tmp_path):
    (tmp_path / "train_nsarm.py").write_text("from prefect import flow\n\n\n@flow\ndef train_nsarm():\n    pass\n")
    assert _flow_def("train_nsarm", tmp_path).name == "train_nsarm"
    with pytest.raises(AssertionError, match="build_dataset.py is missing"):
        _flow_def("build_dataset", tmp_path)


@pytest.mark.parametrize("func", FLOWS.values())
def test_parameters_are_arguments_of_the_flow(prefect_cfg, func):
    params = _deployments(prefect_cfg)[func].get("parameters") or {}
    fn = _flow_def(func)
    defaults = _defaults(fn)
    unknown = set(params) - set(defaults)
    assert not unknown, f"prefect.yaml passes {unknown} but flows/{func}.py:{func} takes {sorted(defaults)}"
    for key, value in params.items():
        default = defaults[key]
        if default is not ... and default is not None:
            assert type(value) is type(default), f"{func}({key}=…): {value!r} vs default {default!r}"


def test_cluster_parameters(prefect_cfg, cluster_env):
    deps = _deployments(prefect_cfg)
    for func, d in deps.items():
        assert d["parameters"]["root"] == cluster_env["NSARM_DATA_ROOT"], func
    train = deps["train_nsarm"]["parameters"]
    assert train["num_workers"] == TOTAL_GPUS and train["use_gpu"] is True
    # The preset is a training preset (train_nsarm's `preset`; a model preset such as "nsarm-8b" is refused by
    # the deployment's parameter schema), read from nsarm/train/config.py without importing torch.
    tree = ast.parse((REPO / "nsarm" / "train" / "config.py").read_text())
    (presets,) = [n.value for n in ast.walk(tree) if isinstance(n, ast.AnnAssign | ast.Assign)
                  and "TRAIN_PRESETS" in ast.unparse(n.target if isinstance(n, ast.AnnAssign) else n.targets[0])]
    assert train["preset"] in {ast.literal_eval(k) for k in presets.keys}


def test_rayjob_runs_the_train_flow_with_the_deployments_parameters(prefect_cfg):
    entry = one(load_docs(RAYJOB), "RayJob")["spec"]["entrypoint"]
    argv = shlex.split(entry)
    assert argv[:2] == ["python", "-c"], entry
    tree = ast.parse(argv[2])
    imports = [(n.module, [a.name for a in n.names]) for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert imports == [("flows.train_nsarm", ["train_nsarm"])]
    (call,) = [n.value for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert ast.unparse(call.func) == "train_nsarm" and not call.args
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    assert kwargs == _deployments(prefect_cfg)["train_nsarm"]["parameters"]


def test_work_pool_is_served_by_a_process_worker_on_the_ray_head(prefect_cfg, launcher):
    pools = {d["work_pool"]["name"] for d in prefect_cfg["deployments"]}
    assert len(pools) == 1
    (pool,) = pools
    head = one(load_docs(RAYCLUSTER), "RayCluster")["spec"]["headGroupSpec"]["template"]
    (worker,) = [c for c in containers(head) if c["name"] == "prefect-worker"]
    launcher_cmds = [shlex.split(c.split("(", 1)[-1]) for c in launcher["head_start_ray_commands"]
                     if "prefect worker start" in c]
    assert len(launcher_cmds) == 1, f"{LAUNCHER.name} must start exactly one Prefect worker on the head"
    for argv in (worker["command"], launcher_cmds[0]):
        assert argv[argv.index("--pool") + 1] == pool and argv[argv.index("--type") + 1] == "process", argv


def test_flow_runs_start_in_the_images_project_dir(prefect_cfg, launcher):
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M)
    image_dir = workdirs[-1]
    (pull,) = prefect_cfg["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == image_dir
    template = json.loads(WORK_POOL.read_text())
    assert template["variables"]["properties"]["working_dir"]["default"] == image_dir
    head = one(load_docs(RAYCLUSTER), "RayCluster")["spec"]["headGroupSpec"]["template"]
    (worker,) = [c for c in containers(head) if c["name"] == "prefect-worker"]
    assert worker["workingDir"] == image_dir
    assert any(f"cd {image_dir} &&" in c for c in launcher["head_start_ray_commands"] if "prefect worker" in c)
    # The entrypoint files are part of the image: the Dockerfile copies the whole project into image_dir.
    assert re.search(rf"^COPY \. {re.escape(image_dir)}$", DOCKERFILE.read_text(), re.M)


def test_work_pool_template_placeholders_are_declared_variables():
    template = json.loads(WORK_POOL.read_text())
    declared = set(template["variables"]["properties"])
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used and used <= declared, f"undeclared template variables: {used - declared}"


def test_prefect_and_deployment_versions_match_the_pins(prefect_cfg, pyproject):
    # `prefect deploy` records these; keep them in step with the package and the pinned Prefect.
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (REPO / "infra/docker/constraints.txt").read_text(), re.M))
    assert prefect_cfg["prefect-version"] == pins["prefect"]
    assert {d["version"] for d in prefect_cfg["deployments"]} == {pyproject["project"]["version"]}

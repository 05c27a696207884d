"""`nsarm stack add-node/remove-node/status` bookkeeping without Ray: input errors name the input, and a node's
process group (here a real stand-in process started the way `add_node` starts one) is listed, stopped, killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from nsarm import processes, stack, stack_nodes
from nsarm.stack import StackConfig, StackError


def _cfg(tmp_path) -> StackConfig:
    return StackConfig(state_dir=tmp_path, ray_port=45678, ray_dashboard_port=45679)


@pytest.mark.parametrize("text, words", [
    ('{"sim_node_2": 1', ["not valid JSON", '{"sim_node_2": 1']),
    ('["sim_node_2"]', ["must be a JSON object"]),
    ('{"sim": -1}', ["non-negative"]),
    ('{"sim": true}', ["non-negative number"]),
    ('{"CPU": 2}', ["['CPU']", "--num-cpus"]),
    ('{"node:127.0.0.1": 1}', ["node:127.0.0.1"]),
])
def test_bad_resources_name_the_input(text, words):
    with pytest.raises(StackError) as err:
        stack_nodes.parse_resources(text)
    assert "--resources" in str(err.value) and all(w in str(err.value) for w in words)


def test_resources_parse_to_floats():
    assert stack_nodes.parse_resources('{"sim_node_2": 1, "disk": 0.5}') == {"sim_node_2": 1.0, "disk": 0.5}
    assert stack_nodes.parse_resources(None) == {}


def test_node_command_joins_the_head_on_distinct_free_ports(tmp_path):
    cfg = _cfg(tmp_path)
    cmd = stack_nodes.node_command(cfg, 1, {"sim_node_2": 1.0, "nsarm_node_node2": 1.0})
    assert cmd[cmd.index("--address") + 1] == "127.0.0.1:45678" and "--head" not in cmd and "--block" in cmd
    assert json.loads(cmd[cmd.index("--resources") + 1]) == {"sim_node_2": 1.0, "nsarm_node_node2": 1.0}
    port_flags = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                  "--dashboard-agent-grpc-port", "--metrics-export-port"]
    ports = [int(cmd[cmd.index(f) + 1]) for f in port_flags]
    assert len(set(ports)) == len(ports) and 52365 not in ports  # Ray's fixed agent default collides across nodes
    # the same AF_UNIX-friendly session dir as the head
    assert cmd[cmd.index("--temp-dir") + 1] == str(tmp_path / "ray")


def test_add_node_errors(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(StackError, match=r"node name 'bad name!' is invalid"):
        stack_nodes.add_node(cfg, "bad name!")
    with pytest.raises(StackError, match="--num-cpus must be >= 0, got -1"):
        stack_nodes.add_node(cfg, "n2", num_cpus=-1)
    with pytest.raises(StackError, match="Ray head is not running"):
        stack_nodes.add_node(cfg, "n2")
    external = StackConfig(state_dir=tmp_path, ray_address="10.0.0.1:6379")
    with pytest.raises(StackError, match="10.0.0.1:6379 is external"):
        stack_nodes.add_node(external, "n2")


def _fake_node(cfg, name: str, script: str) -> int:
    """A process group registered exactly as add_node registers a node (shell + a child, own session)."""
    svc = processes.Service(processes.node_file_name(name), ["bash", "-c", script], None, ())
    pid = processes.start(cfg, svc)
    record = json.loads(processes.pid_file(cfg, svc.name).read_text())
    processes.pid_file(cfg, svc.name).write_text(json.dumps({**record, "name": name, "num_cpus": 1,
                                                          "resources": {"nsarm_node_" + name: 1.0}}))
    deadline = time.monotonic() + 10
    while len(processes.group_members(pid)) < 2 and time.monotonic() < deadline:  # wait for the child
        time.sleep(0.05)
    return pid


def test_status_remove_and_kill(tmp_path):
    cfg = _cfg(tmp_path)
    polite = _fake_node(cfg, "n2", "sleep 300 & wait")
    stubborn = _fake_node(cfg, "n3", "trap '' TERM; sleep 300 & wait")
    members = processes.group_members(polite) | processes.group_members(stubborn)
    report = stack_nodes.node_status(cfg)
    assert list(report) == ["n2", "n3"]
    assert report["n2"] == {"state": "running", "pid": polite, "num_cpus": 1, "resources": {"nsarm_node_n2": 1.0}}

    with pytest.raises(StackError) as err:
        stack_nodes.remove_node(cfg, "n9")
    assert "'n9'" in str(err.value) and "['n2', 'n3']" in str(err.value)

    assert stack_nodes.remove_node(cfg, "n2", grace_s=10, echo=lambda *_: None) == "stopped"
    # the stubborn group ignores SIGTERM (the child inherits the ignored disposition): SIGKILL after the grace
    t0 = time.monotonic()
    assert stack_nodes.remove_node(cfg, "n3", grace_s=0.5, echo=lambda *_: None) == "killed"
    assert time.monotonic() - t0 < 10
    assert stack_nodes.node_status(cfg) == {}
    assert not [p for p in members if processes.alive(p)]


def test_crashed_node_shows_stopped_and_down_stops_the_rest(tmp_path):
    cfg = _cfg(tmp_path)
    crashed = _fake_node(cfg, "n2", "sleep 300 & wait")
    alive = _fake_node(cfg, "n3", "sleep 300 & wait")
    members = processes.group_members(alive)
    os.killpg(crashed, 9)
    deadline = time.monotonic() + 5
    while processes.alive(crashed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {n: r["state"] for n, r in stack_nodes.node_status(cfg).items()} == {"n2": "stopped", "n3": "running"}
    result = stack.down(cfg, echo=lambda *_: None, timeout=10)
    assert result == {name: "not running" for name in ("deployments", "ray", "mlflow", "prefect")}
    assert stack_nodes.node_status(cfg) == {} and not [p for p in members if processes.alive(p)]


def test_cli_errors_exit_1_and_name_the_input(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    nsarm = [os.path.join(os.path.dirname(sys.executable), "nsarm")]
    out = subprocess.run(nsarm + ["stack", "remove-node", "ghost", "--state-dir", str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 1 and "unknown node 'ghost'" in out.stderr
    out = subprocess.run(nsarm + ["stack", "add-node", "--resources", "{x", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1 and "--resources '{x' is not valid JSON" in out.stderr

"""Extra Ray worker nodes for the embedded stack: a multi-node cluster simulated on one machine.

    nsarm stack add-node --name node2 --num-cpus 1 --resources '{"sim_node_2": 1}'
    nsarm stack remove-node node2      # SIGTERM its process group, SIGKILL after the grace period
    nsarm stack status                 # the services, then one line per extra node

Each node is `ray start --address <head GCS> --block` (one process group owned by one PID, like the head) with the
stack's token environment, its own PID file (`pids/node-NAME.pid`) and log (`logs/node-NAME.log`) under the state
dir, and every listening port chosen free so several raylets can share one host. Ray gives every node on this host
the same `node:<ip>` resource, so each node also gets `nsarm_node_NAME: 1`, a resource only it has: work can be
pinned to a node by name, and a node can be recognised in Ray's state API by its resources.

`remove-node` is also the "a node dies" hook of the fault-tolerance tests: `--grace 0` is a SIGKILL of the whole
node (raylet, object store, workers) with no drain, as a crashed machine would be.
"""

from __future__ import annotations

import json
import re
import sys
import time

from nsarm.processes import (
    HOST,
    Service,
    StackError,
    alive,
    free_port,
    log_file,
    log_tail,
    node_file_name,
    node_names,
    pid_file,
    read_pid,
    start,
    stop_groups,
)
from nsarm.stack import StackConfig

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")


def node_resource(name: str) -> str:
    """The custom resource only node `name` has (quantity 1)."""
    return f"nsarm_node_{name}"


def parse_resources(text: str | None) -> dict[str, float]:
    """`--resources` JSON → {name: quantity}; a clear error naming the input when it is not an object of numbers."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise StackError(f"--resources {text!r} is not valid JSON ({e.msg} at char {e.pos}); "
                         "expected an object such as '{\"sim_node_2\": 1}'") from None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
            for k, v in value.items()):
        raise StackError(f"--resources {text!r} must be a JSON object of resource name → non-negative number, "
                         "e.g. '{\"sim_node_2\": 1}'")
    reserved = sorted(k for k in value if k in ("CPU", "GPU", "memory", "object_store_memory") or k.startswith("node:"))
    if reserved:
        raise StackError(f"--resources {text!r}: {reserved} are set by Ray or by --num-cpus, not as custom resources")
    return {k: float(v) for k, v in value.items()}


def _next_name(cfg: StackConfig) -> str:
    taken = set(node_names(cfg))
    i = 2  # the head is node 1
    while f"node{i}" in taken:
        i += 1
    return f"node{i}"


def node_command(cfg: StackConfig, num_cpus: int, resources: dict[str, float]) -> list[str]:
    """`ray start` for a worker node joining this stack's head, on free ports (the defaults, e.g. the dashboard
    agent's 52365, are already taken by the head on the same host)."""
    ports = [free_port() for _ in range(5)]
    # Ray's own CLI with loopback addresses kept (plain `ray start` would join via the machine's address)
    return [sys.executable, "-m", "nsarm.ray_loopback", "start", "--address", cfg.ray_url, "--block", "--node-ip-address", HOST,
            "--num-cpus", str(num_cpus), "--resources", json.dumps(resources),
            "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
            "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
            "--metrics-export-port", str(ports[4]),
            "--min-worker-port", str(cfg.ray_min_worker_port), "--max-worker-port", str(cfg.ray_max_worker_port),
            # Ray's default (30% of RAM per node) would reserve several GiB of /dev/shm per simulated node
            "--object-store-memory", str(1 << 30),
            # the head's session dir: one cluster, one place for logs (`ray` tools find it there)
            "--temp-dir", str(cfg.state_dir / "ray"), "--disable-usage-stats"]


def add_node(cfg: StackConfig, name: str | None = None, num_cpus: int = 1, resources: dict[str, float] | None = None,
             wait_s: float = 60.0, echo=print) -> dict:
    """Join one more Ray worker node to the stack's head and wait until the head lists it.

    Returns:
        {"name", "pid", "num_cpus", "resources"} (resources include `nsarm_node_NAME`).
    Raises:
        StackError: the stack's Ray head is external or not running, the name is invalid or taken, or the node did
            not join within `wait_s` (with the tail of its log).
    """
    name = name or _next_name(cfg)
    if not _NAME_RE.match(name):
        raise StackError(f"node name {name!r} is invalid: use letters, digits, '_' or '-' (at most 41 characters)")
    if num_cpus < 0:
        raise StackError(f"--num-cpus must be >= 0, got {num_cpus}")
    if cfg.ray_address:
        raise StackError(f"add-node joins nodes to the stack's own Ray head; RAY_ADDRESS={cfg.ray_address} is external")
    if read_pid(cfg, "ray") is None:
        raise StackError(f"the stack's Ray head is not running (state dir {cfg.state_dir}); run `nsarm stack up` first")
    if read_pid(cfg, node_file_name(name)):
        raise StackError(f"node {name!r} is already running (pid {read_pid(cfg, node_file_name(name))})")
    res = {**(resources or {}), node_resource(name): 1.0}
    svc = Service(node_file_name(name), node_command(cfg, num_cpus, res), None, (),
                  {"RAY_USAGE_STATS_ENABLED": "0", **cfg.ray_env()})
    pid = start(cfg, svc)
    record = json.loads(pid_file(cfg, svc.name).read_text())
    pid_file(cfg, svc.name).write_text(json.dumps({**record, "name": name, "num_cpus": num_cpus, "resources": res}))
    _wait_joined(cfg, name, pid, wait_s)
    echo(f"node {name} joined (pid {pid}, {num_cpus} CPU, resources {res}), log {log_file(cfg, svc.name)}")
    return {"name": name, "pid": pid, "num_cpus": num_cpus, "resources": res}


def ray_state(cfg: StackConfig, kind: str, **filters: str) -> list[dict]:
    """Ray's state API (`/api/v0/{kind}`: nodes, actors, tasks, workers, detailed) over the stack dashboard's REST
    endpoint with the stack's token (no `ray` import in this layer). `filters` are equality filters."""
    import urllib.parse
    import urllib.request

    headers = {}
    if cfg.ray_token_path.exists():
        headers["Authorization"] = f"Bearer {cfg.ray_token_path.read_text().strip()}"
    query = [("limit", "10000"), ("detail", "true")]
    for key, value in filters.items():
        query += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
    url = f"{cfg.ray_dashboard}/api/v0/{kind}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        return json.loads(r.read())["data"]["result"]["result"]


def alive_nodes(cfg: StackConfig) -> list[dict]:
    """The head's alive nodes as Ray's state API lists them ({"node_id", "resources_total", "is_head_node", …})."""
    return ray_state(cfg, "nodes", state="ALIVE")


def node_joined(cfg: StackConfig, name: str) -> bool:
    """Whether the head lists an alive node holding `nsarm_node_NAME`."""
    try:
        return any(node_resource(name) in n.get("resources_total", {}) for n in alive_nodes(cfg))
    except (OSError, KeyError, ValueError):
        return False


def _wait_joined(cfg: StackConfig, name: str, pid: int, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    log = log_file(cfg, node_file_name(name))
    while not node_joined(cfg, name):
        if not alive(pid):
            pid_file(cfg, node_file_name(name)).unlink(missing_ok=True)
            raise StackError(f"node {name} exited while joining; last log lines ({log}):\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"node {name} (pid {pid}) did not join the head within {wait_s:.0f} s; "
                             f"last log lines ({log}):\n{log_tail(log)}")
        time.sleep(0.5)


def remove_node(cfg: StackConfig, name: str, grace_s: float = 35.0, echo=print) -> str:
    """Stop node `name`: SIGTERM its process group, SIGKILL whatever is left after `grace_s` (0: SIGKILL at once,
    a crash). Returns "stopped", "killed" or "not running" (a PID file whose process is gone is cleaned up).

    Raises:
        StackError: no node of that name was ever added to this stack (the message lists the known ones).
    """
    known = node_names(cfg)
    if name not in known:
        raise StackError(f"unknown node {name!r} in {cfg.state_dir}; known nodes: {known or 'none'} "
                         "(the head is managed by `nsarm stack up/down`)")
    fname = node_file_name(name)
    result = stop_groups({name: read_pid(cfg, fname)}, grace_s)[name]
    pid_file(cfg, fname).unlink(missing_ok=True)
    echo(f"node {name}: {result}")
    return result


def node_status(cfg: StackConfig) -> dict[str, dict]:
    """Per extra node: state (running / stopped), pid, num_cpus, resources."""
    report = {}
    for name in node_names(cfg):
        fname = node_file_name(name)
        try:
            record = json.loads(pid_file(cfg, fname).read_text())
        except (OSError, json.JSONDecodeError):
            record = {}
        pid = read_pid(cfg, fname)
        report[name] = {"state": "running" if pid else "stopped", "pid": pid, "num_cpus": record.get("num_cpus"),
                        "resources": record.get("resources", {})}
    return report


def node_cli(cfg: StackConfig, args) -> int:
    """`nsarm stack add-node|remove-node` (argparse namespace from nsarm.stack_cli.register)."""
    try:
        if args.action == "add-node":
            if args.node:
                raise StackError(f"add-node takes the name as --name, not as {args.node!r}")
            add_node(cfg, args.name, args.num_cpus, parse_resources(args.resources), wait_s=cfg.health_timeout_s)
        else:
            if not args.node:
                raise StackError("remove-node needs the node's name: nsarm stack remove-node NAME")
            remove_node(cfg, args.node, grace_s=args.grace)
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

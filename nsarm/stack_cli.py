"""`nsarm stack up|down|status|add-node|remove-node`: the command line of the embedded stack (nsarm/stack.py) and
its extra Ray nodes (nsarm/stack_nodes.py). Both modules are imported here; neither imports this one.

    nsarm stack up [--prefect-port P …]     nsarm stack status [--json]     nsarm stack down
    nsarm stack add-node --name node2 --num-cpus 1     nsarm stack remove-node node2 --grace 0
"""

from __future__ import annotations

import json
import sys

from nsarm.stack import StackConfig, StackError, down, print_client_env, print_urls, status, up
from nsarm.stack_nodes import node_cli, node_status


def register(sub) -> None:
    p = sub.add_parser("stack", help="embedded local Prefect + MLflow + Ray stack")
    p.add_argument("action", choices=["up", "down", "status", "add-node", "remove-node"])
    p.add_argument("node", nargs="?", help="remove-node: the node's name")
    p.add_argument("--state-dir", help="default $NSARM_STATE_DIR or ./.nsarm")
    p.add_argument("--prefect-port", type=int)
    p.add_argument("--mlflow-port", type=int)
    p.add_argument("--ray-port", type=int)
    p.add_argument("--ray-dashboard-port", type=int)
    p.add_argument("--ray-client-port", type=int, help="Ray client server (ray://) port (default 10001)")
    p.add_argument("--ray-min-worker-port", type=int, help="Ray workers' port range start (default 10002)")
    p.add_argument("--ray-max-worker-port", type=int, help="Ray workers' port range end (default 19999)")
    p.add_argument("--ray-cpus", type=int)
    p.add_argument("--timeout", type=float, help="seconds to wait for health endpoints (default 120)")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.add_argument("--name", help="add-node: node name (default node2, node3, …)")
    p.add_argument("--num-cpus", type=int, default=1, help="add-node: CPUs the node offers (default 1)")
    p.add_argument("--resources", help="add-node: extra custom resources as JSON, e.g. '{\"sim_node_2\": 1}'")
    p.add_argument("--grace", type=float, default=35.0,
                   help="remove-node: seconds between SIGTERM and SIGKILL (0: kill at once, like a crash)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    cfg = StackConfig.from_env(state_dir=args.state_dir, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port,
                               ray_port=args.ray_port, ray_dashboard_port=args.ray_dashboard_port,
                               ray_client_port=args.ray_client_port, ray_min_worker_port=args.ray_min_worker_port,
                               ray_max_worker_port=args.ray_max_worker_port, ray_cpus=args.ray_cpus,
                               health_timeout_s=args.timeout)
    if args.action in ("add-node", "remove-node"):
        return node_cli(cfg, args)
    if args.action == "up":
        try:
            up(cfg)
        except StackError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print_urls(cfg)
    elif args.action == "down":
        down(cfg)
    else:
        report, nodes = status(cfg), node_status(cfg)
        if args.json:
            print(json.dumps({**report, "nodes": nodes} if nodes else report, indent=2))
        else:
            for name, r in report.items():
                print(f"{name:12s} {r['state']:10s} pid={r['pid'] or '-':<8} {r['url']}")
            for name, r in nodes.items():
                print(f"node {name:7s} {r['state']:10s} pid={r['pid'] or '-':<8} {r['num_cpus']} CPU "
                      f"{json.dumps(r['resources'])}")
            print_client_env(cfg)
        return 0 if all(r["state"] in ("running", "external") for r in report.values()) else 3
    return 0

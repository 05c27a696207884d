"""`ray start` for a worker node that joins a loopback-only head on this host (`python -m nsarm.ray_loopback ARGS`).

The embedded stack binds every Ray socket to 127.0.0.1 with Ray's single-machine switch
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (then Ray's node IP is the loopback address and its servers listen there).
`ray start --address` refuses to add a worker node under that switch, and without it Ray rewrites 127.0.0.1 (the
head's GCS address and the node's own `--node-ip-address`) to the machine's external address, where the head does
not listen. This entry point runs Ray's own `ray start` with exactly those two behaviours turned off: loopback
addresses are kept as given, and the single-machine check is skipped. Everything else is Ray's CLI unchanged.
"""

from __future__ import annotations

import sys


def _keep_loopback() -> None:
    """Patch Ray's CLI process (only this one) so a loopback address stays loopback and worker nodes are allowed."""
    from ray._private import ray_constants, services

    if not hasattr(services, "resolve_ip_for_localhost") or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        raise SystemExit("nsarm.ray_loopback: this Ray version lacks services.resolve_ip_for_localhost / "
                         "ray_constants.ENABLE_RAY_CLUSTER; extra loopback nodes need Ray 2.4x-2.6x")
    services.resolve_ip_for_localhost = lambda host: host
    ray_constants.ENABLE_RAY_CLUSTER = True


def main(argv: list[str] | None = None) -> int:
    _keep_loopback()
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *(sys.argv[1:] if argv is None else argv)]
    return ray_main()


if __name__ == "__main__":
    sys.exit(main())

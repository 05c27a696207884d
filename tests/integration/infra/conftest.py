"""Service fixtures for the cluster recipes: a throw-away PostgreSQL server and the MLflow server of infra/mlflow/.

PostgreSQL comes from the Debian package (binaries under /usr/lib/postgresql/<version>/bin, not on PATH). The server
refuses to run as root, so under root every PostgreSQL command runs as the `postgres` user through `runuser`.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.services import free_port, stop_group, wait_healthy
from tests.support.stack import NODE_RESOURCE, stack_processes

REPO = Path(__file__).resolve().parents[3]
START_MLFLOW = REPO / "infra" / "mlflow" / "start-mlflow.sh"


def _postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None when no server package is installed."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").exists()]
    # Version directories are integers on Debian (15, 16, …): compare numerically, not as strings.
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else -1)
    return found[-1] if found else None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, db: str) -> str:
        """SQLAlchemy URL with the psycopg2 driver (a bare postgresql:// would load psycopg 3, not installed)."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{db}"

    def connect(self, db: str = "postgres"):
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=db)
        conn.autocommit = True
        return conn


@pytest.fixture(scope="module")
def postgres_server():
    """A PostgreSQL cluster initialised in a temp dir, listening on a free port on 127.0.0.1 (trust auth)."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    as_pg: list[str] = []
    root = tempfile.mkdtemp(prefix="nsarm-pg-")
    if os.geteuid() == 0:
        import pwd

        try:
            pg = pwd.getpwnam("postgres")
        except KeyError as e:
            raise RuntimeError("running as root but there is no 'postgres' user to run the PostgreSQL server") from e
        os.chown(root, pg.pw_uid, pg.pw_gid)
        as_pg = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(root, "data")
    port = free_port()
    # --no-sync: a throw-away cluster needs no fsync (initdb drops from ~1 s to ~0.3 s on a busy CI disk).
    subprocess.run([*as_pg, str(bindir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, timeout=60)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", data, "-l", os.path.join(root, "postgres.log"),
                            "-o", opts, "-w", "-t", "30", "start"], capture_output=True, text=True, timeout=60)
    if start.returncode != 0:
        log = Path(root, "postgres.log").read_text(errors="replace") if Path(root, "postgres.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed ({start.returncode}): {start.stderr}\n{log[-2000:]}")
    try:
        yield PostgresServer(host="127.0.0.1", port=port, user="postgres")
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    bucket: str
    prefix: str          # key prefix of the artifact store inside the bucket
    database: str




@pytest.fixture(scope="module")
def mlflow_postgres_s3(postgres_server, moto_s3, tmp_path_factory):
    """infra/mlflow/start-mlflow.sh with a fresh PostgreSQL database and a moto S3 bucket as artifact store."""
    import uuid

    import boto3

    # a fresh bucket per module: the moto server is shared by the session, and other modules use this fixture too
    db, bucket, prefix = "mlflow", f"nsarm-mlflow-{uuid.uuid4().hex[:8]}", "mlflow-artifacts"
    conn = postgres_server.connect()
    try:  # not `with conn:` — psycopg2 ≥ 2.9 opens a transaction there, and CREATE DATABASE refuses to run in one
        conn.cursor().execute(f"CREATE DATABASE {db}")
    finally:
        conn.close()
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=bucket)

    port = free_port()
    env = dict(os.environ)
    env.update({
        # the script runs `mlflow` from PATH: the test interpreter's venv
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "MLFLOW_BACKEND_STORE_URI": postgres_server.url(db),
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/{prefix}",
        "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
        # as the k8s manifest does: the names clients use (exercises the script's --allowed-hosts branch)
        "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}",
        "MLFLOW_S3_ENDPOINT_URL": moto_s3,
        # no server-side job runners (7 extra processes on a 2-core CI box; the recipe does not use them)
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    })
    log_path = tmp_path_factory.mktemp("mlflow-pg") / "mlflow.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", str(START_MLFLOW)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(uri + "/health", proc, log_path, timeout=90)
        yield MlflowServer(uri=uri, bucket=bucket, prefix=prefix, database=db)
    finally:
        stop_group(proc)




@dataclass(frozen=True)
class MultiNodeStack:
    cfg: object           # nsarm.stack.StackConfig of the embedded stack (head: 1 CPU)
    mlflow: MlflowServer  # the PostgreSQL + S3 tracking server the stack uses (external to it)
    node: str             # the second node's name (1 CPU, resources {NODE_RESOURCE: 1, nsarm_node_<node>: 1})
    sample_log: Path      # NSARM_TRAIN_SAMPLE_LOG of the deployments server: <path>.rank<r>.jsonl per training rank




@pytest.fixture(scope="module")
def multinode_stack(mlflow_postgres_s3):
    """Two Ray nodes on this machine: `nsarm stack up` (Prefect, Ray head with 1 CPU, the deployments server) with
    MLflow on PostgreSQL + moto S3, then `add_node` joins a second 1-CPU node with its own resource. On teardown
    the stack goes down and the fixture fails if any process of it (nodes included) survives."""
    from nsarm import processes, stack, stack_nodes

    # a short path: Ray's unix sockets live under <state>/ray/session_<timestamp>/sockets (AF_UNIX limit 107 bytes)
    state = Path(tempfile.mkdtemp(prefix="nsarm-mn-"))
    cfg = stack.StackConfig(state_dir=state, prefect_port=free_port(), ray_port=free_port(),
                            ray_dashboard_port=free_port(), ray_client_port=free_port(), ray_cpus=1,
                            mlflow_tracking_uri=mlflow_postgres_s3.uri, health_timeout_s=180)
    sample_log = state / "samples"
    pids: set[int] = set()
    with pytest.MonkeyPatch.context() as mp:
        # the stack's processes inherit this environment: no outside services, the training sample-log hook on
        for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
            mp.delenv(k, raising=False)
        mp.setenv("NSARM_TRAIN_SAMPLE_LOG", str(sample_log))
        try:
            stack.up(cfg, echo=lambda *_: None)
            node = stack_nodes.add_node(cfg, "node2", num_cpus=1, resources={NODE_RESOURCE: 1}, echo=lambda *_: None)
            pids = stack_processes(cfg)
            yield MultiNodeStack(cfg=cfg, mlflow=mlflow_postgres_s3, node=node["name"], sample_log=sample_log)
        finally:
            pids |= stack_processes(cfg)
            # 10 s, not Ray's 30 s drain: nothing of this throw-away cluster needs a graceful exit
            stack.down(cfg, echo=lambda *_: None, timeout=10)
            time.sleep(1)
            leftover = [p for p in pids if processes.alive(p)]
            if not leftover:
                shutil.rmtree(state, ignore_errors=True)
            assert not leftover, f"multi-node stack processes still alive after down: {leftover}"

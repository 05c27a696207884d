#!/usr/bin/env bash
# MLflow tracking server for the cluster: PostgreSQL backend store, S3 artifact store, artifacts proxied by the server.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow:PASS@postgres:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://nsarm-prod/mlflow-artifacts \
#   infra/mlflow/start-mlflow.sh
#
# Variables (see infra/mlflow/mlflow.env.example): MLFLOW_BACKEND_STORE_URI and MLFLOW_ARTIFACTS_DESTINATION are
# required; MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (4), MLFLOW_ALLOWED_HOSTS (Host headers the
# server accepts besides localhost and private IPs) are optional. S3 credentials come from the usual AWS_* variables
# (or the pod's IAM role); MLFLOW_S3_ENDPOINT_URL points at a non-AWS S3 (MinIO, moto in the tests).
# This is the recipe tests/integration/infra/test_mlflow_postgres_s3.py runs against a real PostgreSQL and moto S3.
set -euo pipefail

die() { echo "start-mlflow.sh: $*" >&2; exit 2; }

: "${MLFLOW_BACKEND_STORE_URI:?start-mlflow.sh: set MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://USER:PASS@HOST:5432/DB}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?start-mlflow.sh: set MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/PREFIX}"

# SQLAlchemy 2.x maps a bare postgresql:// to psycopg 3, which the image does not ship; psycopg2-binary is what we pin.
case "$MLFLOW_BACKEND_STORE_URI" in
  postgresql+psycopg2://*) ;;
  postgresql://*) die "MLFLOW_BACKEND_STORE_URI must use the postgresql+psycopg2:// driver (got postgresql://: SQLAlchemy would load psycopg 3, not installed)" ;;
  *) die "MLFLOW_BACKEND_STORE_URI must be a postgresql+psycopg2:// URI (got '${MLFLOW_BACKEND_STORE_URI%%://*}://…')" ;;
esac
case "$MLFLOW_ARTIFACTS_DESTINATION" in
  s3://?*) ;;
  *) die "MLFLOW_ARTIFACTS_DESTINATION must be an s3://bucket/prefix URI (got '$MLFLOW_ARTIFACTS_DESTINATION')" ;;
esac

host="${MLFLOW_HOST:-0.0.0.0}"
port="${MLFLOW_PORT:-5000}"
workers="${MLFLOW_WORKERS:-4}"
extra=()
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  # MLflow 3 rejects Host headers other than localhost/private IPs (DNS-rebinding guard): in Kubernetes the service
  # name (mlflow.nsarm.svc.cluster.local:5000) must be listed or every client request is refused.
  extra+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

# Log where the database is, never who logs in with what password.
echo "start-mlflow.sh: backend postgresql+psycopg2://…@${MLFLOW_BACKEND_STORE_URI#*@}" \
     "artifacts $MLFLOW_ARTIFACTS_DESTINATION, listening on $host:$port" >&2
# --serve-artifacts: clients upload through the server (mlflow-artifacts:/ URIs), so training pods need no S3 write
# access to the MLflow bucket; multi-GB checkpoints are NOT sent this way (they stay on NSARM_STORAGE, see DESIGN §5).
# The schema migration runs on start (alembic); exec so the caller's SIGTERM reaches the server.
exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host "$host" --port "$port" --workers "$workers" \
  "${extra[@]}"

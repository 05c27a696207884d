"""Serve both deployments from one long-running process (started by `nsarm stack up`).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve
Then, from any shell: `prefect deployment run build-dataset/default` / `prefect deployment run train-nsarm/default`.
"""

from __future__ import annotations

from prefect import serve

from flows.build_dataset import build_dataset
from flows.train_nsarm import train_nsarm


def main() -> None:
    serve(
        build_dataset.to_deployment(name="default", description="Shard → degrade → caption → manifest → MLflow"),
        train_nsarm.to_deployment(name="default", description="Stage 1 → stage 2 → evaluate → register"),
        limit=2,
    )


if __name__ == "__main__":
    main()

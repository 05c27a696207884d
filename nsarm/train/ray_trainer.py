"""The project's only Ray code for training: one NSARM stage as a fault-tolerant Ray Train `TorchTrainer` job.

    out = run_stage("/data/nsarm", preset="tiny", stage=1, num_workers=2, use_gpu=False)
    out = run_stage(root, preset="tiny", stage=2, init_from=out["export"]["uri"])
    # out = {"run_name", "storage_path", "checkpoint" (URI), "export": {"uri", "sha256", ...}, "metrics",
    #        "mlflow_run_id", "model_version"}

Ray pieces: `ScalingConfig(num_workers, use_gpu, resources_per_worker)`, `TorchConfig(backend="gloo")` on CPU
(NCCL on GPU), `RunConfig(name, storage_path, FailureConfig(max_failures), CheckpointConfig(num_to_keep))`.
Each worker runs `nsarm.train.loop.train_stage` with a `RayContext`: checkpoints go through `ray.train.report`
to `{storage_path}/{name}/checkpoint_*` (a local path or s3://); after a worker dies Ray restarts the group and
`ray.train.get_checkpoint()` hands the last checkpoint back; rerunning with the same run name resumes the same way.

S3 storage (`storage_path="s3://bucket/runs"`, also for MinIO/Ceph/moto): the driver resolves the pyarrow
filesystem with its own $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL and hands it to Ray (`storage_filesystem`), and
passes those variables and the region on to the workers (their export goes through fsspec/s3fs); credentials
are each process's own AWS chain, or `worker_env={"AWS_ACCESS_KEY_ID": …, "AWS_SECRET_ACCESS_KEY": …}` for a
cluster whose nodes have none (they then also travel inside the pickled storage filesystem).

MLflow (when a tracking URI is given or $MLFLOW_TRACKING_URI is set): the driver creates one run per stage and, at
the end, registers the export as a version of `nsarm` with the alias `stage{n}` (both in nsarm/train/registry.py);
rank 0 logs losses/lr/throughput per step, system metrics and LR|SR|HR grids.

Reruns change nothing that exists: the export path is named after the step count and the training config
(`export/step000024-<hash>`), exports are write-once (export.py), and a version already registered from the same
run with the same sha256 is reused, not registered again.

Test hooks (driver environment): NSARM_TRAIN_FAIL_AT_STEP=N [NSARM_TRAIN_FAIL_RANK=r] kills that worker right
after step N, once per call; NSARM_TRAIN_SAMPLE_LOG=path makes every rank append its sample keys and loss per
step.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path

import fsspec

from dataset import configs
from nsarm.train.config import ScalingSpec, TrainConfig, scaling_for, train_config
from nsarm.train.data import dataset_label, dataset_version
from nsarm.train.registry import EXPERIMENT, register_export, start_tracking


class RayContext:
    """loop.Context backed by Ray Train (rank, world size, checkpoint restore/report)."""

    def __init__(self):
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self._restored = ray.train.get_checkpoint()
        self._tmp = None

    def latest_checkpoint(self) -> Path | None:
        if self._restored is None:
            return None
        self._tmp = tempfile.mkdtemp(prefix=f"nsarm-restore-r{self.rank}-")
        return Path(self._restored.to_directory(self._tmp))

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, int | float)}, checkpoint=ckpt)


def _worker(config: dict) -> None:
    """Runs in every Ray Train worker process."""
    from nsarm.compat import ensure_torchvision_importable
    from nsarm.train.loop import LoopOptions, Tracker, train_stage

    ensure_torchvision_importable()  # the worker process's entry point: before anything imports torchvision

    ctx = RayContext()
    cfg = TrainConfig.from_dict(config["train"])
    tracker = Tracker(config.get("mlflow_run_id"), config.get("tracking_uri"), EXPERIMENT) if ctx.rank == 0 \
        else Tracker()
    if ctx.rank == 0 and config.get("mlflow_run_id") and config.get("system_metrics"):
        from nsarm import tracking

        tracking.enable_system_metrics()
    options = dict(config["options"])
    if config.get("use_gpu"):
        import ray.train.torch

        options["device"] = str(ray.train.torch.get_device())  # Ray's mapping of this worker to its GPU
    train_stage(cfg, config["root"], ctx, tracker, LoopOptions(**options))


# ------------------------------------------------------------------------------------------------ driver side
def default_storage(root: str) -> str:
    """Where runs live by default: `runs/` beside a local dataset root, `{root}-runs` for object storage."""
    root = root.rstrip("/")
    if "://" in root and not root.startswith("file://"):
        return root + "-runs"
    return str(Path(root.removeprefix("file://")).resolve().parent / "runs")


def _local_cache_dir(storage: str, name: str) -> str:
    if "://" in storage and not storage.startswith("file://"):
        return str(Path(tempfile.gettempdir()) / "nsarm-train-cache")
    return str(Path(storage.removeprefix("file://")) / "_cache")


# Non-secret S3 settings of the driver that every Ray Train worker gets too (set in its runtime env).
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")


def storage_filesystem(storage: str, credentials: dict[str, str] | None = None):
    """(pyarrow filesystem, path) for a remote `storage` URI, resolved HERE, in the driver; (None, path) locally.

    pyarrow reads the endpoint from $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL (MinIO, Ceph, moto) and the region from
    the AWS variables; handing Ray the resolved filesystem (it pickles the endpoint, not the credentials) makes the
    driver's setting hold in the Train controller and every worker, whatever their own environment says.
    Credentials come from each process's default AWS chain (env, ~/.aws, instance role), unless `credentials`
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY[, AWS_SESSION_TOKEN]) are given: then they travel inside the pickled
    filesystem, for clusters whose nodes have none."""
    if "://" not in storage or storage.startswith("file://"):
        return None, storage.removeprefix("file://")
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(storage)
    creds = credentials or {}
    if isinstance(fs, pyarrow.fs.S3FileSystem) and creds.get("AWS_ACCESS_KEY_ID"):
        opts = fs.__reduce__()[1][0]  # the resolved options (endpoint, region, scheme, …) as constructor kwargs
        fs = pyarrow.fs.S3FileSystem(
            access_key=creds["AWS_ACCESS_KEY_ID"], secret_key=creds.get("AWS_SECRET_ACCESS_KEY"),
            session_token=creds.get("AWS_SESSION_TOKEN"), region=opts["region"] or None, scheme=opts["scheme"],
            endpoint_override=opts["endpoint_override"] or None,
            force_virtual_addressing=opts["force_virtual_addressing"])
    return fs, path


def _worker_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: os.environ[k] for k in S3_ENV if os.environ.get(k)}
    return {**env, **(extra or {})}


def _hooks_from_env(name: str) -> dict:
    hooks = {}
    if os.environ.get("NSARM_TRAIN_FAIL_AT_STEP"):
        hooks.update(fail_at_step=int(os.environ["NSARM_TRAIN_FAIL_AT_STEP"]),
                     fail_rank=int(os.environ.get("NSARM_TRAIN_FAIL_RANK", "0")),
                     marker=str(Path(tempfile.gettempdir()) / f"nsarm-fail-{name}-{uuid.uuid4().hex[:8]}"))
    if os.environ.get("NSARM_TRAIN_SAMPLE_LOG"):
        hooks["sample_log"] = os.environ["NSARM_TRAIN_SAMPLE_LOG"]
    return hooks


def export_name(cfg: TrainConfig) -> str:
    """The export directory of a finished run with `cfg`: `step{steps:06d}-{config hash}`; a run continued with more
    steps or other settings exports to a new path, the same settings find their (write-once) export again."""
    return f"step{cfg.steps:06d}-{configs.config_hash(cfg, digits=8)}"


def run_stage(root: str, preset: str = "tiny", stage: int = 1, num_workers: int | None = None,
              use_gpu: bool | None = None, *, storage_path: str | None = None, run_name: str | None = None,
              overrides: dict | None = None, init_from: str | None = None, max_failures: int = 2,
              tracking_uri: str | None = None, register: bool = True, system_metrics: bool = True,
              worker_env: dict[str, str] | None = None) -> dict:
    """Train one stage with Ray Train (resuming the run `run_name` when it has checkpoints); see module docstring.

    Args:
        root: dataset root (local or s3://) with HR, LR and (optionally) caption versions.
        preset: training preset (nsarm.train.config.TRAIN_PRESETS): 'tiny', 'nsarm-8b-16gpu'.
        num_workers, use_gpu: override the preset's scaling.
        storage_path: Ray RunConfig storage (local dir or s3://); default `default_storage(root)`.
        run_name: Ray run name; default `nsarm-{preset}-{dataset version}-stage{n}` (a rerun resumes it).
        overrides: TrainConfig field overrides (e.g. {"steps": 40}).
        init_from: stage 2: the stage-1 export directory (our format).
        tracking_uri: MLflow server; default $MLFLOW_TRACKING_URI; with neither, nothing is tracked.
        worker_env: extra environment variables of every worker, e.g. S3 credentials for nodes that have none
            (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY here also go into the checkpoint storage filesystem that the
            Train controller uses); the driver's $AWS_ENDPOINT_URL[_S3] / $AWS_[DEFAULT_]REGION are passed on always.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from nsarm.train.export import read_export_info

    cfg = train_config(preset, stage, **(overrides or {}))
    if init_from:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "init_from": init_from})
    base = scaling_for(preset, stage)
    scaling = ScalingSpec(num_workers or base.num_workers, base.use_gpu if use_gpu is None else use_gpu,
                          base.cpus_per_worker, base.gpus_per_worker)
    cfg.micro_batch(scaling.num_workers)  # fail in the driver, not in every worker
    storage = (storage_path or default_storage(root)).rstrip("/")
    name = run_name or f"nsarm-{preset}-{dataset_version(root)}-stage{stage}"
    run_dir = f"{storage}/{name}"
    storage_fs, storage_path_in_fs = storage_filesystem(storage, worker_env)
    if storage_fs is None:
        Path(storage_path_in_fs).mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    run_id = start_tracking(cfg, scaling, root, run_dir, name, preset, tracking_uri) if tracking_uri else None
    cache = _local_cache_dir(storage, name)
    export_uri = f"{run_dir}/export/{export_name(cfg)}"
    config = {"train": cfg.to_dict(), "root": root, "mlflow_run_id": run_id, "tracking_uri": tracking_uri,
              "system_metrics": system_metrics, "use_gpu": scaling.use_gpu,
              "options": {"export_dir": export_uri, "latent_cache": f"{cache}/latents",
                          "caption_cache": f"{cache}/captions", "hooks": _hooks_from_env(name)}}
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    # Ray Train (V2, Ray 2.60) lists runs in the dashboard's Train page only with state tracking on; read by the
    # trainer in this (driver) process. An explicit "0" in the environment is respected.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    trainer = TorchTrainer(
        _worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=scaling.resources_per_worker()),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path_in_fs, storage_filesystem=storage_fs,
            worker_runtime_env={"env_vars": _worker_env(worker_env)},
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    with _watch_progress(f"train stage {stage}", run_id, tracking_uri, cfg.steps, scaling.num_workers):
        result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training stage {stage} ({name}) failed: {result.error}") from result.error
    # the workers rewrote the export: drop what this process's (shared, cached) fsspec filesystem remembers of it
    fsspec.core.url_to_fs(export_uri)[0].invalidate_cache()
    export = read_export_info(export_uri)
    out = {"stage": stage, "preset": preset, "run_name": name, "storage_path": storage, "run_dir": run_dir,
           "checkpoint": _checkpoint_uri(storage, result.checkpoint), "export": export,
           "metrics": dict(result.metrics or {}), "mlflow_run_id": run_id, "model_version": None,
           "tracking_uri": tracking_uri}
    if run_id and register:
        out["model_version"] = register_export(export, run_id, stage, tracking_uri, preset=preset,
                                               dataset=dataset_label(root))
    return out


def _watch_progress(label: str, run_id: str | None, tracking_uri: str | None, steps: int, num_workers: int):
    """Progress lines while fit() runs (nsarm/train/progress.py); nothing to watch without an MLflow run."""
    if not (run_id and tracking_uri):
        return contextlib.nullcontext()
    from nsarm.train.progress import TrainProgress

    return TrainProgress(label, run_id, tracking_uri, steps, num_workers)


def _checkpoint_uri(storage: str, checkpoint) -> str | None:
    """The last checkpoint as a URI (Ray gives a path inside its storage filesystem: 'bucket/runs/…' for S3)."""
    if checkpoint is None:
        return None
    if "://" in storage and not storage.startswith("file://"):
        return f"{storage.split('://', 1)[0]}://{checkpoint.path.lstrip('/')}"
    return checkpoint.path

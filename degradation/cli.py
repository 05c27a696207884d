"""`nsarm degrade ROOT --preset realesrgan [--seed N] [--shards 0,1]`: single-process degradation of HR shards.

For debugging a stage without Ray; the build-dataset flow uses `degradation.distributed.run_degradation`.
Prints one JSON line per shard and the run summary (`dataset.stage.StageSummary`); exits 1 if any shard failed.
"""

from __future__ import annotations

import argparse
import json


def _shards(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shards expects comma-separated integers, got {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    import time

    from dataset.inputs import check_dataset_root
    from dataset.stage import run_in_process
    from degradation.config import degradation_config
    from degradation.worker import DegradeShard, summarize_run

    done = check_dataset_root(args.root, args.shards)  # before anything is written under a mistyped root
    cfg = degradation_config(args.preset)
    shards = args.shards if args.shards is not None else done
    t0 = time.monotonic()
    worker = DegradeShard(args.root, cfg, args.seed, batch_size=args.batch_size, device=args.device)
    results = run_in_process(shards, worker, progress=lambda res, _done, _total: print(json.dumps(res.brief())))
    summary = summarize_run(args.root, worker.deg_hash, results, time.monotonic() - t0)
    print(json.dumps(summary))
    return 1 if summary["shards_failed"] else 0


def register(subparsers) -> None:
    from degradation.config import PRESETS  # light: dataclasses only

    p = subparsers.add_parser("degrade", help="Real-ESRGAN degradation of {root}/hr shards into {root}/lr/{hash}")
    p.add_argument("root", help="dataset root (local path or s3://bucket/prefix)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="realesrgan")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (with the config, names the output folder)")
    p.add_argument("--shards", type=_shards, default=None, help="e.g. 0,3,7 (default: every done HR shard)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.set_defaults(func=_run)

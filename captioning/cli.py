"""`nsarm caption`: caption a dataset root's shards, in this process or on a Ray actor pool.

    nsarm caption /data/ds --backend metadata                                   # Unsplash descriptions, no model
    nsarm caption /data/ds --model-path /models/llava-1.5-13b-hf --ray auto     # the paper's LLaVA on a cluster
    python -m captioning.tiny /tmp/tiny-llava                                   # CPU smoke run: a tiny random
    nsarm caption /data/ds --model-path /tmp/tiny-llava --greedy --max-new-tokens 16   # LLaVA, then caption with it

Prints the run summary as JSON; exits 1 when a shard failed. Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json

from captioning.config import BACKENDS, DTYPES, IMAGE_SOURCES, PRESETS


def register(subparsers) -> None:
    p = subparsers.add_parser("caption", help="caption dataset shards (LLaVA, source metadata or fixed prompt)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="dataset root (local path or s3://bucket/prefix) holding hr/{shard:06d}.tar")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="base config (default: paper)")
    p.add_argument("--backend", choices=BACKENDS, help="override the preset's backend")
    p.add_argument("--model-path", help="local llava-hf checkpoint directory (llava backend)")
    p.add_argument("--question", help="question asked to LLaVA (default: the paper's)")
    p.add_argument("--greedy", action="store_true", default=None, help="argmax decoding instead of sampling")
    p.add_argument("--max-new-tokens", type=int, help="generation budget per caption (paper: 512)")
    p.add_argument("--batch-size", type=int, help="images per generate() call")
    p.add_argument("--dtype", choices=DTYPES, help="model dtype (auto: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--image", choices=IMAGE_SOURCES, help="caption the HR photo or the degraded LR image")
    p.add_argument("--deg-hash", help="degradation hash naming {root}/lr/{deg_hash}/ (with --image lr)")
    p.add_argument("--shards", help="comma-separated shard ids (default: every ready shard)")
    p.add_argument("--ray", metavar="ADDRESS", nargs="?", const="local",
                   help="run on a Ray actor pool; ADDRESS 'auto'/'ray://…' joins a cluster, bare --ray starts one")
    p.add_argument("--num-actors", type=int, help="Ray actors (default: one per GPU, else one per CPU)")
    p.set_defaults(func=_run)


def _check_inputs(root: str, cfg, shards: list[int] | None) -> None:
    """Root, shards, LR version and model directory exist, before anything is created (InputError otherwise)."""
    from pathlib import Path

    from captioning.captioner import missing_model_message
    from dataset import contract
    from dataset.inputs import InputError, check_dataset_root, check_exists

    check_dataset_root(root, shards)
    if cfg.image == "lr":
        check_exists(contract.lr_dir(root, cfg.deg_hash or ""), "--deg-hash: LR folder")
    if cfg.backend == "llava" and not (Path(cfg.model_path or "") / "config.json").is_file():
        raise InputError(f"--model-path: {missing_model_message(cfg.model_path or '')}")


def _run(args) -> int:
    import logging

    from captioning.config import caption_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from dataset.inputs import InputError

    try:
        cfg = caption_config(args.preset, backend=args.backend, model_path=args.model_path, question=args.question,
                             greedy=args.greedy, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             dtype=args.dtype, image=args.image, deg_hash=args.deg_hash)
    except ValueError as e:  # e.g. --image lr without --deg-hash
        raise InputError(str(e)) from None
    shards = [int(s) for s in args.shards.split(",")] if args.shards else None
    _check_inputs(args.root, cfg, shards)
    if args.ray:
        from captioning.distributed import run_captioning

        address = None if args.ray == "local" else args.ray
        summary = run_captioning(args.root, cfg, ray_address=address, shards=shards, num_actors=args.num_actors)
    else:
        from captioning.worker import caption_shards

        summary = caption_shards(args.root, cfg, shards=shards)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 1 if summary["shards_failed"] else 0

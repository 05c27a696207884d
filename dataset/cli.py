"""`nsarm shard` (the shard stage in one process, or on Ray with --ray) and `nsarm serve-photos` (demo source).

    nsarm serve-photos /tmp/demo --port 8800               # bundled photos over HTTP + /tmp/demo/photos.tsv
    nsarm shard /tmp/demo/photos.tsv /tmp/demo/ds --preset tiny --limit 12
    nsarm shard urls.parquet s3://bucket/ds --url-col url --caption-col text --shard-size 10000 --ray

Rerunning the same `nsarm shard` command resumes (done shards are skipped); `--retry-failed` re-attempts only the
failed rows. Exit status 1 when a shard failed (its error is printed and in the summary).
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    from dataset.config import PRESETS, UNSPLASH_FORMATS

    p = subparsers.add_parser("shard", help="source list → {root}/hr WebDataset shards (download, validate, crop)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="photos.tsv* (file/glob/folder), csv/tsv/parquet/txt URL list, or image folder")
    p.add_argument("root", help="dataset root: local folder or s3://bucket/prefix")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="ShardConfig preset (default: paper)")
    p.add_argument("--limit", type=int, help="only the first N source rows")
    p.add_argument("--shard-size", type=int, help="input rows per shard")
    p.add_argument("--image-size", type=int, help="side of the square output (default 1024)")
    p.add_argument("--min-side", type=int, help="reject images whose short side is smaller (too_small)")
    p.add_argument("--upscale-small", action="store_true", default=None, help="upscale small images instead")
    p.add_argument("--unsplash-format", choices=UNSPLASH_FORMATS,
                   help="imgix fm= for Unsplash URLs (default png: lossless; always with fit=max)")
    p.add_argument("--unsplash-quality", type=int, help="imgix q= for the lossy formats (default 100)")
    p.add_argument("--threads", type=int, help="download threads per shard")
    p.add_argument("--timeout", type=float, help="total seconds per download attempt")
    p.add_argument("--retries", type=int, help="extra attempts on timeouts/5xx")
    p.add_argument("--no-robots", dest="respect_robots", action="store_false", default=None,
                   help="ignore X-Robots-Tag noai/noimageai opt-outs (on by default)")
    p.add_argument("--url-col", default="url")
    p.add_argument("--caption-col", default="caption")
    p.add_argument("--id-col", default=None, help="column holding a stable key (else {shard:06d}{index:04d})")
    p.add_argument("--retry-failed", action="store_true", help="re-attempt the failed rows of done shards")
    p.add_argument("--shards", help="comma-separated shard ids to build (debugging)")
    p.add_argument("--ray", action="store_true", help="one Ray task per shard ($RAY_ADDRESS or a local cluster)")
    p.add_argument("--ray-address", help="Ray cluster address (implies --ray)")
    p.set_defaults(func=_shard)

    s = subparsers.add_parser("serve-photos", help="serve the bundled photos over HTTP and write DIR/photos.tsv")
    s.add_argument("dir", help="folder for photos/ and photos.tsv")
    s.add_argument("--port", type=int, default=8800)
    s.set_defaults(func=_serve_photos)


def _check_source(source: str) -> None:
    """The source exists and is a kind `nsarm shard` reads (InputError otherwise; nothing is created)."""
    from dataset.inputs import InputError, check_exists
    from dataset.sources import detect_kind

    check_exists(source, "source")
    if not source.startswith(("http://", "https://")):
        try:
            detect_kind(source)
        except ValueError as e:
            raise InputError(str(e)) from None


def _shard(args) -> int:
    from dataset.build import build_shards
    from dataset.config import shard_config

    _check_source(args.source)

    cfg = shard_config(args.preset, shard_size=args.shard_size, image_size=args.image_size, min_side=args.min_side,
                       upscale_small=args.upscale_small, unsplash_format=args.unsplash_format,
                       unsplash_quality=args.unsplash_quality, threads=args.threads, total_timeout=args.timeout,
                       retries=args.retries, respect_robots=args.respect_robots)
    shards = [int(x) for x in args.shards.split(",")] if args.shards else None
    summary = build_shards(args.source, args.root, cfg, limit=args.limit, ray_address=args.ray_address,
                           use_ray=bool(args.ray or args.ray_address), retry_failed=args.retry_failed,
                           url_col=args.url_col, caption_col=args.caption_col, id_col=args.id_col, shards=shards)
    print(json.dumps(summary, indent=2, default=str))
    return 1 if summary["shards_failed"] else 0


def _serve_photos(args) -> int:
    import time

    from dataset.httpserve import serve_sample_photos

    server, tsv = serve_sample_photos(args.dir, port=args.port)
    print(f"serving {server.base_url} ; source list: {tsv}  (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0

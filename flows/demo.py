"""`make demo`: the whole workflow on the embedded stack, tiny preset, bundled real photos.

    python -m flows.demo [--keep-running]

1. `nsarm stack up` (Prefect :4200, MLflow :5000, Ray :8265, the deployments server), idempotent;
2. serves the bundled photos over HTTP on 127.0.0.1 and writes an Unsplash-style photos.tsv for them;
3. `build-dataset/default` through the Prefect deployment (shard → degrade → caption → manifest → MLflow);
4. `train-nsarm/default` through the deployment (stage 1 → stage 2 → evaluate → register in MLflow);
5. upscales one photo with the registered model; prints where everything is.
A stage that is not built yet fails its flow run with "not implemented yet: <stage>"; the demo then stops there
and says so (exit 1).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from nsarm import stack

DEMO_SUBDIR = "demo"


def _run(deployment: str, parameters: dict, timeout_s: float) -> object:
    from prefect.deployments import run_deployment

    print(f"\n==> prefect deployment run {deployment} " + " ".join(f"-p {k}={v}" for k, v in parameters.items()))
    t0 = time.monotonic()
    run = run_deployment(deployment, parameters=parameters, timeout=timeout_s, poll_interval=3)
    state = run.state
    print(f"    flow run {run.name} ({run.id}) -> {state.name} in {time.monotonic() - t0:.0f} s")
    if not state.is_completed():
        print(f"    reason: {state.message}")
        raise SystemExit(f"demo stopped: {deployment} ended {state.name}")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo-port", type=int, default=0, help="port of the local photo server (0: any free)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each flow run")
    args = parser.parse_args(argv)

    cfg = stack.StackConfig.from_env()
    print("==> nsarm stack up")
    try:
        stack.up(cfg)
    except stack.StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.environ.update(cfg.client_env())  # before Prefect reads its settings

    from dataset.httpserve import serve_sample_photos

    work = cfg.state_dir / DEMO_SUBDIR
    server, tsv = serve_sample_photos(work / "source", port=args.photo_port)
    print(f"==> serving {len(list((work / 'source' / 'photos').iterdir()))} bundled photos at {server.base_url}, "
          f"list {tsv}")
    data_root = str(work / "data")
    try:
        _run("build-dataset/default", {"source": str(tsv), "root": data_root, "preset": "tiny", "shard_size": 6,
                                       "degradation": "realesrgan", "captioner": "metadata", "seed": 0},
             args.timeout)
        _run("train-nsarm/default", {"root": data_root, "preset": "tiny", "num_workers": 2, "use_gpu": False},
             args.timeout)
    finally:
        server.stop()
    sr_path = upscale_one_photo(cfg, work)

    print("\nDone. Where to look:")
    stack.print_urls(cfg)
    print(f"Dataset root    {data_root}  (hr/, lr/, captions/, manifest.json; checkpoints under runs/)")
    print(f"Model registry  {cfg.mlflow_url}/#/models/nsarm  (aliases stage1, stage2, champion)")
    print(f"Upscaled photo  {sr_path}")
    return 0


def upscale_one_photo(cfg: stack.StackConfig, work: Path) -> Path:
    """`nsarm upscale` with the registry's champion on a bundled photo shrunk ×4 (tiled: it is not the model's
    native LR size), so the output has the photo's original size."""
    from PIL import Image

    from nsarm.train.registry import resolve_checkpoint

    checkpoint = resolve_checkpoint("champion", tracking_uri=cfg.mlflow_url)
    photo = Image.open(work / "source" / "photos" / "chelsea.png").convert("RGB")
    lr = photo.resize((photo.width // 4, photo.height // 4), Image.BICUBIC)
    lr_path, sr_path = work / "chelsea_lr.png", work / "chelsea_x4.png"
    lr.save(lr_path)
    cmd = [str(Path(sys.executable).parent / "nsarm"), "upscale", str(lr_path), str(sr_path),
           "--checkpoint", checkpoint, "--seed", "0", "--device", "cpu"]
    print(f"\n==> nsarm upscale {lr_path} {sr_path} --checkpoint {checkpoint}  (nsarm@champion)")
    subprocess.run(cmd, check=True)
    print(f"    {lr.width}x{lr.height} -> {Image.open(sr_path).size[0]}x{Image.open(sr_path).size[1]}")
    return sr_path


if __name__ == "__main__":
    sys.exit(main())

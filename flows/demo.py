"""`make demo`: the whole workflow on the embedded stack, tiny preset, bundled real photos.

    python -m flows.demo [--keep-running]

1. `nsarm stack up` (Prefect :4200, MLflow :5000, Ray :8265, the deployments server), idempotent;
2. serves the bundled photos over HTTP on 127.0.0.1 and writes an Unsplash-style photos.tsv for them;
3. `build-dataset/default` through the Prefect deployment (shard → degrade → caption → manifest → MLflow) into
   the deployments' default root `.nsarm/data`;
4. `train-nsarm/default` through the deployment (stage 1 → stage 2 → evaluate → register in MLflow);
   while each flow run works, its log (progress of every stage: shards done/total, steps, loss, samples/s, ETA)
   is printed as it grows;
5. upscales one photo with the registered model;
6. screenshots of the Prefect, MLflow and Ray UIs (headless Chromium) into .nsarm/demo/screenshots/; prints where
   everything is.
A flow run that does not complete stops the demo there, which says so (exit 1).
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


def _run(cfg: stack.StackConfig, deployment: str, parameters: dict, timeout_s: float) -> dict:
    """Start a deployment run and print its log (stage progress, losses, ETAs) as it grows; stop the demo unless
    it completes. Returns the flow run's JSON."""
    from prefect.deployments import run_deployment

    from flows.progress import follow

    print(f"\n==> prefect deployment run {deployment} " + " ".join(f"-p {k}={v}" for k, v in parameters.items()))
    t0 = time.monotonic()
    started = run_deployment(deployment, parameters=parameters, timeout=0)
    run = follow(cfg.prefect_url, str(started.id), echo=lambda line: print(f"    | {line}", flush=True),
                 timeout_s=timeout_s, session=stack.prefect_session(cfg))
    state = run["state"]
    print(f"    flow run {run['name']} ({run['id']}) -> {state['name']} in {time.monotonic() - t0:.0f} s")
    if state["type"] != "COMPLETED":
        print(f"    reason: {state.get('message')}")
        raise SystemExit(f"demo stopped: {deployment} ended {state['name']}")
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
    os.environ["NSARM_STATE_DIR"] = str(cfg.state_dir)  # default_root() of this process = the deployments' one
    from dataset.httpserve import serve_sample_photos
    from flows.params import default_root

    work = cfg.state_dir / DEMO_SUBDIR
    server, tsv = serve_sample_photos(work / "source", port=args.photo_port)
    print(f"==> serving {len(list((work / 'source' / 'photos').iterdir()))} bundled photos at {server.base_url}, "
          f"list {tsv}")
    data_root = default_root()  # what both deployments use when no root is given
    try:
        build = _run(cfg, "build-dataset/default",
                     {"source": str(tsv), "root": data_root, "preset": "tiny", "shard_size": 6,
                      "degradation": "realesrgan", "captioner": "metadata", "seed": 0}, args.timeout)
        train = _run(cfg, "train-nsarm/default",
                     {"root": data_root, "preset": "tiny", "num_workers": 2, "use_gpu": False}, args.timeout)
    finally:
        server.stop()
    from nsarm import tracking
    from nsarm.train.registry import CHAMPION, REGISTERED_MODEL

    champion = tracking.get_model_version(REGISTERED_MODEL, alias=CHAMPION, tracking_uri=cfg.mlflow_url)
    sr_path = upscale_one_photo(cfg, work)
    shots_ok = take_screenshots(cfg, work / "screenshots")

    print("\nDone. Where to look:")
    stack.print_urls(cfg)
    for deployment, run in (("build-dataset", build), ("train-nsarm", train)):
        print(f"Flow run        {cfg.prefect_ui}/runs/flow-run/{run['id']}   ({deployment}: {run['name']})")
    print(f"MLflow run      {_mlflow_run_url(cfg, champion['run_id'])}   (training run of the champion)")
    print(f"Model version   {REGISTERED_MODEL} v{champion['version']}, aliases {', '.join(sorted(champion['aliases']))}"
          f"   {cfg.mlflow_url}/#/models/{REGISTERED_MODEL}/versions/{champion['version']}")
    print(f"Checkpoint      {champion['tags']['checkpoint_uri']}")
    print(f"Dataset root    {data_root}  (hr/, lr/, captions/, manifest.json)")
    print(f"Upscaled photo  {sr_path}")
    print(f"Screenshots     {work / 'screenshots'}" + ("" if shots_ok else "   (incomplete: see above)"))
    return 0 if shots_ok is not False else 1


def _mlflow_run_url(cfg: stack.StackConfig, run_id: str) -> str:
    """The MLflow UI page of a run (its URL needs the experiment id: one REST call)."""
    import requests

    info = requests.get(f"{cfg.mlflow_url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=10).json()
    return f"{cfg.mlflow_url}/#/experiments/{info['run']['info']['experiment_id']}/runs/{run_id}"


def take_screenshots(cfg: stack.StackConfig, out: Path) -> bool | None:
    """PNGs of the Prefect deployments and runs, the MLflow registry and the Ray jobs pages (nsarm/screenshots.py).

    Returns:
        True when all show what they should, False when a page did not (the demo then exits 1: the run is done
        but a UI does not show it), None when this machine has no Chromium (skipped, with the install hint).
    """
    from nsarm import screenshots

    print(f"\n==> nsarm screenshots --out {out}")
    try:
        screenshots.capture_stack(cfg, out, echo=lambda line: print(f"    {line}"))
    except screenshots.BrowserMissing as e:
        print(f"    skipped: {e}")
        return None
    except screenshots.ScreenshotError as e:
        print(f"    error: {e}", file=sys.stderr)
        return False
    return True


def upscale_one_photo(cfg: stack.StackConfig, work: Path) -> Path:
    """`nsarm upscale` with the registry's champion on a bundled photo shrunk ×4 (tiled: it is not the model's
    native LR size), so the output has the photo's original size."""
    from PIL import Image

    from nsarm.train.registry import CHAMPION, resolve_checkpoint

    checkpoint = resolve_checkpoint(CHAMPION, tracking_uri=cfg.mlflow_url)
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

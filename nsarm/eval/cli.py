"""`nsarm eval`: score a checkpoint on a test set, or score existing SR folders (comparison mode).

    nsarm eval --checkpoint ckpt.pth --testset realsr --testset-root NSARM/data/test --hr-dir RealSR/HR --out runs/e1
    nsarm eval --sr-dir nsarm=out/nsarm --sr-dir seesr=out/seesr --hr-dir RealSR/HR --name realsr --out runs/cmp
    nsarm eval --sr-dir out/rp60 --name rp60 --weights-dir ~/iqa --mlflow-uri http://127.0.0.1:5000  # scored at 512²

SSIM and NIQE use pyiqa's protocol (the one behind published per-image tables); --protocol basicsr selects BasicSR's
calculate_ssim / calculate_niqe on BT.601 Y. The report's notes name the protocol used.

Weights for the deep metrics load from --weights-dir (default $NSARM_IQA_WEIGHTS or ~/.cache/nsarm/iqa); a
metric whose weights are absent is listed as unavailable with the file to fetch, and the rest are still computed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nsarm.eval.metrics import PROTOCOLS


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score SR outputs: PSNR/SSIM/LPIPS/NIQE/CLIPIQA/MUSIQ/MANIQA/TOPIQ + "
                                           "robustness counts", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to score (one of --checkpoint or --sr-dir)")
    src.add_argument("--checkpoint", help="model checkpoint to upscale the test set with")
    src.add_argument("--sr-dir", action="append", default=[], metavar="[NAME=]DIR",
                     help="folder of existing SR outputs; repeat to compare methods (they share mu_G)")
    ts = p.add_argument_group("test set")
    ts.add_argument("--testset", choices=["realsr", "drealsr", "rp60"], help="NSARM release layout under --testset-root")
    ts.add_argument("--testset-root", help="the NSARM repo's data/test folder")
    ts.add_argument("--lr-dir", help="LR folder of a custom test set (with --checkpoint)")
    ts.add_argument("--captions", help="caption jsonl for --lr-dir")
    ts.add_argument("--synthetic-from", metavar="HR_DIR", help="build a synthetic set from HR photos (Real-ESRGAN "
                    "degradation, as the paper's DIV2K set) under --out/synthetic")
    ts.add_argument("--synthetic-size", type=int, default=1024, help="HR side of the synthetic set: short side LANCZOS-resized to it, then centre-cropped (NSARM add_deg.py)")
    ts.add_argument("--seed", type=int, default=0, help="degradation seed of the synthetic set")
    ts.add_argument("--hr-dir", help="ground-truth folder (paired by file stem); omit for no-reference only")
    ts.add_argument("--name", help="test-set name in reports (default: --testset or the LR/SR folder name)")
    m = p.add_argument_group("metrics")
    m.add_argument("--metrics", default=None, help="comma list (default: all of the paper's)")
    m.add_argument("--weights-dir", default=None, help="folder with the metric weight files")
    m.add_argument("--crop-border", type=int, default=0, help="border cut for PSNR/SSIM/NIQE (default 0)")
    m.add_argument("--eval-size", type=int, default=None, help="no-HR sets: downsample SR to this side (default: "
                   "512 for rp60, as the paper; native otherwise; 0 = native)")
    m.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0],
                   help="SSIM/NIQE implementation: pyiqa (default, the published per-image protocol) or basicsr")
    m.add_argument("--mu-g", type=float, default=None, help="fixed mu_G for the D/P/C counts (default: pooled mean)")
    m.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--per-metric-plots", action="store_true", help="also plot each NR metric's sorted curve")
    p.add_argument("--mlflow-uri", default=None, help="log to this tracking server (also $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="nsarm-eval")
    p.add_argument("--run-name", default=None)
    p.add_argument("--no-mlflow", action="store_true", help="write the report only")
    p.set_defaults(func=cmd_eval)


def _sr_dirs(specs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        if not Path(path).is_dir():
            raise SystemExit(f"--sr-dir {spec}: {path} is not a folder")
        if name in out:
            raise SystemExit(f"--sr-dir: method name {name!r} given twice (use NAME=DIR)")
        out[name] = path
    return out


def _check_paths(args: argparse.Namespace) -> None:
    """Every input path given exists, before a report folder or a synthetic set is created."""
    from dataset.inputs import check_exists

    for flag in ("checkpoint", "testset_root", "lr_dir", "captions", "hr_dir", "synthetic_from"):
        if getattr(args, flag):
            check_exists(getattr(args, flag), f"--{flag.replace('_', '-')}")


def load_upscale_fn(checkpoint: str, device: str):
    """The model path's `upscale_fn(lr_images, captions=None) -> sr_images` (nsarm.inference_cli)."""
    from nsarm.inference_cli import UpscaleError, build_upscale_fn

    try:
        return build_upscale_fn(checkpoint, device=device)
    except UpscaleError as e:
        raise SystemExit(f"error: {e}") from None


def cmd_eval(args: argparse.Namespace) -> int:
    import os

    from nsarm.eval.metrics import PAPER_METRICS, MetricConfig
    from nsarm.eval.run import MlflowTarget, evaluate_folders, evaluate_upscaler
    from nsarm.eval.testsets import build_synthetic_testset, folder_testset, nsarm_testset

    if bool(args.checkpoint) == bool(args.sr_dir):
        raise SystemExit("give exactly one of --checkpoint or --sr-dir")
    if args.checkpoint and args.testset and not args.testset_root:
        raise SystemExit("--testset needs --testset-root (the NSARM data/test folder)")
    if args.checkpoint and not (args.testset or args.lr_dir or args.synthetic_from):
        raise SystemExit("--checkpoint needs --testset (+ --testset-root), --lr-dir or --synthetic-from")
    _check_paths(args)
    metrics = tuple(s.strip() for s in args.metrics.split(",")) if args.metrics else PAPER_METRICS
    cfg = MetricConfig(metrics=metrics, crop_border=args.crop_border, weights_dir=args.weights_dir,
                       device=args.device, protocol=args.protocol)
    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    target = None if args.no_mlflow or not uri else MlflowTarget(args.experiment, uri, args.run_name)
    if args.sr_dir:
        sr_dirs = _sr_dirs(args.sr_dir)
        name = args.name or args.testset or Path(next(iter(sr_dirs.values()))).name
        report = evaluate_folders(cfg, name, sr_dirs, out_dir=args.out, hr_dir=args.hr_dir,
                                  eval_size=args.eval_size, mu_g=args.mu_g, mlflow=target,
                                  per_metric_plots=args.per_metric_plots)
    else:
        if args.testset:
            testset = nsarm_testset(args.testset, args.testset_root, args.hr_dir)
        elif args.lr_dir:
            testset = folder_testset(args.name or Path(args.lr_dir).name, args.lr_dir, args.hr_dir, args.captions)
        else:
            testset = build_synthetic_testset(args.synthetic_from, Path(args.out) / "synthetic",
                                              size=args.synthetic_size, seed=args.seed)
        upscale_fn = load_upscale_fn(args.checkpoint, args.device)
        report = evaluate_upscaler(cfg, testset, upscale_fn, name=Path(args.checkpoint).stem, out_dir=args.out,
                                   batch_size=args.batch_size, eval_size=args.eval_size, mu_g=args.mu_g,
                                   mlflow=target, per_metric_plots=args.per_metric_plots)
    print(report.files["summary_md"].read_text(encoding="utf-8"))
    print(f"report: {report.out_dir}" + (f"  (logged to {uri})" if target else ""))
    return 0

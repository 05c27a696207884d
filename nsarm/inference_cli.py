"""`nsarm upscale INPUT OUTPUT`: ×4 super-resolution of a PNG/JPEG file or a folder of them, any size (tiled).

    nsarm upscale lr.png sr.png --checkpoint runs/tiny/ckpt            # our checkpoint (config.json + weights)
    nsarm upscale lr_dir/ sr_dir/ --checkpoint NSARM.pth --preset nsarm-8b \
        --tokenizer infinity_vae_d56_f8_14_patchify.pth --text-encoder flan-t5-xl/ --caption-file captions.jsonl
    nsarm upscale lr.png sr.png --model models:/nsarm@champion   # a registered version ($MLFLOW_TRACKING_URI)

Captions: --caption for every image, or --caption-file: a .jsonl with `image_path` + `long_caption` per line
(the release's format), a .json object {file name: caption}, or a .txt used for every image. Without either the
release's alternative default prompt is used. Outputs are PNG, exactly 4× the input size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class UpscaleError(Exception):
    """A user-facing problem (missing file, unsupported image, bad option)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("upscale", help="x4 super-resolve an image or a folder of images (NSARM, tiled)")
    p.add_argument("input", type=Path, help="PNG/JPEG file or folder of them")
    p.add_argument("output", type=Path, help="output PNG file (for a file input) or folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="our checkpoint dir, or the official NSARM.pth")
    src.add_argument("--model", help="MLflow model URI: models:/nsarm@champion, models:/nsarm/3, runs:/<id>/<name> "
                                     "(tracking server from $MLFLOW_TRACKING_URI; weights fetched and sha256-checked)")
    p.add_argument("--preset", default="nsarm-8b", help="architecture of an official .pth checkpoint")
    p.add_argument("--tokenizer", type=Path, help="VAE weights (official .pth or ours); required with NSARM.pth")
    p.add_argument("--text-encoder", type=Path, help="T5 directory (default: <checkpoint>/text_encoder)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--caption", help="caption used for every image")
    g.add_argument("--caption-file", type=Path, help=".jsonl (image_path, long_caption), .json {name: caption} or .txt")
    p.add_argument("--tile", type=int, help="LR tile side; must be the model's native LR size (256 for nsarm-8b)")
    p.add_argument("--overlap", type=int, help="LR pixels shared by neighbouring tiles (default: tile/4)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tau", type=float, help="sampling temperature (default: the model's, 0.5 for NSARM)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the model's, 1 for NSARM)")
    p.add_argument("--no-colour-fix", action="store_true", help="skip the AdaIN + wavelet colour fix")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.set_defaults(func=_run)


def _inputs(src: Path) -> list[Path]:
    if not src.exists():
        raise UpscaleError(f"input not found: {src}")
    files = sorted(f for f in src.iterdir() if f.is_file()) if src.is_dir() else [src]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not src.is_dir() and not images:
        raise UpscaleError(f"unsupported image {src}: expected one of {', '.join(IMAGE_SUFFIXES)}")
    if not images:
        raise UpscaleError(f"no PNG/JPEG images in folder {src}")
    return images


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format not in ("PNG", "JPEG", "MPO"):
                raise UpscaleError(f"unsupported image {path}: format {im.format}, expected PNG or JPEG")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise UpscaleError(f"unsupported or corrupt image {path}: {e}") from e


def _captions(args, images: list[Path]) -> list[str]:
    from nsarm.inference import DEFAULT_CAPTION

    if args.caption is not None:
        return [args.caption] * len(images)
    if args.caption_file is None:
        return [DEFAULT_CAPTION] * len(images)
    f = args.caption_file
    if not f.is_file():
        raise UpscaleError(f"caption file not found: {f}")
    if f.suffix == ".txt":
        return [f.read_text().strip()] * len(images)
    table: dict[str, str] = {}
    if f.suffix == ".jsonl":
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if "image_path" not in row or "long_caption" not in row:
                    raise UpscaleError(f"{f}:{n}: each line needs image_path and long_caption")
                table[Path(row["image_path"]).name] = row["long_caption"]
    elif f.suffix == ".json":
        table = {Path(k).name: v for k, v in json.loads(f.read_text()).items()}
    else:
        raise UpscaleError(f"caption file {f}: expected .jsonl, .json or .txt")
    missing = [p.name for p in images if p.name not in table]
    if missing:
        raise UpscaleError(f"caption file {f} has no caption for: {', '.join(missing[:5])}")
    return [table[p.name] for p in images]


def _resolve_model(uri: str) -> Path:
    """The verified local checkpoint directory of an MLflow model URI (UpscaleError when it cannot be had)."""
    from nsarm.pyfunc import checkpoint_dir

    try:
        return checkpoint_dir(uri)
    except Exception as e:  # MlflowException (unknown model/alias, server down), ExportError (missing/changed file)
        raise UpscaleError(f"--model {uri}: {e}") from e


def _load(checkpoint, device, preset: str | None = None, tokenizer=None, text_encoder=None):
    """(model, text encoder) by nsarm.loading's rules, its errors as UpscaleError naming the flags."""
    from nsarm.loading import CLI_NAMES, LoadError, load_for_upscaling

    try:
        return load_for_upscaling(preset, checkpoint, tokenizer, text_encoder, device=device, names=CLI_NAMES)
    except LoadError as e:
        raise UpscaleError(str(e)) from None


def _run(args: argparse.Namespace) -> int:
    try:
        return _upscale(args)
    except UpscaleError as e:
        print(f"nsarm upscale: error: {e}", file=sys.stderr)
        return 2


def _upscale(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from tqdm import tqdm

    from nsarm.inference import to_uint8, upscale_images, upscale_options

    images = _inputs(args.input)
    captions = _captions(args, images)
    pictures = [_open(p) for p in images]  # fail on a bad file before loading a large model
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.model is not None:
        args.checkpoint = _resolve_model(args.model)
    model, encoder = _load(args.checkpoint, device, args.preset, args.tokenizer, args.text_encoder)
    cfg = model.cfg
    if args.tile is not None and args.tile != cfg.lr_size:
        raise UpscaleError(
            f"--tile {args.tile}: model {cfg.name!r} only runs on {cfg.lr_size}² LR tiles (its transformation "
            "network's LayerNorms fix the size); larger inputs are tiled automatically"
        )
    options = upscale_options(cfg, args.seed, args.cfg, args.tau, args.overlap, args.batch_size, not args.no_colour_fix)
    if args.input.is_dir():
        outputs = [args.output / f"{p.stem}.png" for p in images]
    elif args.output.is_dir():
        outputs = [args.output / f"{images[0].stem}.png"]
    else:
        outputs = [args.output if args.output.suffix.lower() == ".png" else args.output.with_suffix(".png")]
    bar = tqdm(total=None, unit="tile", desc="upscale", disable=None)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    results = upscale_images(model, pictures, encoder.encode(captions), options, progress)
    bar.close()
    for sr, out in zip(results, outputs, strict=True):
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(sr)).save(out)
        print(out)
    return 0


def build_upscale_fn(checkpoint: str | Path, device: str | None = None, seed: int = 0, caption: str = "",
                     tokenizer: str | Path | None = None, text_encoder: str | Path | None = None,
                     preset: str | None = None):
    """Load a checkpoint once (same rules and errors as `nsarm upscale`) and return its `upscale_fn` (below), the
    callable `nsarm eval` scores (nsarm.inference.make_upscale_fn)."""
    from nsarm.inference import make_upscale_fn

    model, encoder = _load(checkpoint, device, preset, tokenizer, text_encoder)
    return make_upscale_fn(model, encoder, seed, caption)

"""Test-set loaders: RealSR, DRealSR, RP60 folder layouts, NSARM caption jsonl files, and a synthetic set.

Layouts (as in the NSARM release, `data/test/`):
    {root}/data/RealSR_LR_256/Canon_001_LR4.png      256² LR; HR (optional) e.g. {hr_dir}/Canon_001_HR.png
    {root}/data/DRealSR_LR_256/Canon_10_x1.png       HR (optional) e.g. {hr_dir}/Canon_10_x4.png
    {root}/data/RP60_256/01.png                      no HR exists (RealPhoto60)
    {root}/path_caption/{RealSR|DRealSR|RP60}_256.jsonl  {"image_path", "h_div_w", "long_caption", ...} per line
LR and HR files are paired by `pair_key`: the file stem without its _LR4 / _HR / _x1 / _x4 style suffix.
The synthetic set (the paper's DIV2K protocol, NSARM `add_deg.py`) resizes each HR photo's short side to 1024 with
LANCZOS, centre-crops 1024² and degrades it with a fixed seed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_SUFFIX = re.compile(r"(?i)[_-](lr\d*|hr\d*|x\d+|sr|gt|out)$")


@dataclass(frozen=True)
class TestImage:
    """One evaluation input: its pairing key, LR path, optional HR path and optional caption (the text prompt)."""

    key: str
    lr_path: Path
    hr_path: Path | None = None
    caption: str | None = None


@dataclass(frozen=True)
class TestSet:
    name: str
    images: tuple[TestImage, ...]

    @property
    def has_hr(self) -> bool:
        return bool(self.images) and all(im.hr_path is not None for im in self.images)

    def __len__(self) -> int:
        return len(self.images)


# Known layouts: the LR folder name inside {root}/data and the caption file inside {root}/path_caption.
LAYOUTS = {
    "realsr": ("RealSR_LR_256", "RealSR_256.jsonl"),
    "drealsr": ("DRealSR_LR_256", "DRealSR_256.jsonl"),
    "rp60": ("RP60_256", "RP60_256.jsonl"),
}

# Side the paper scores SR outputs of a no-HR set at (Sec. 4.1: RP60 outputs are bicubic-downsampled to 512²).
EVAL_SIZES = {"rp60": 512}


def resolve_eval_size(testset: str, eval_size: int | None) -> int | None:
    """The side to downsample no-HR SR outputs to: `eval_size` if given (0 = score at the native size), else the
    paper's size for `testset` (512 for RP60), else None (native)."""
    if eval_size is None:
        return EVAL_SIZES.get(testset.lower())
    if eval_size < 0:
        raise ValueError(f"eval_size must be >= 0 (0 = native size), got {eval_size}")
    return eval_size or None


def pair_key(stem: str) -> str:
    """`Canon_001_LR4` -> `Canon_001`, `sony_1_x1` -> `sony_1`, `01` -> `01` (stems of LR, HR and SR files agree)."""
    return _SUFFIX.sub("", stem)


def list_images(folder: str | Path) -> dict[str, Path]:
    """{pair_key: path} of the image files directly inside `folder`; two files with one key is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            key = pair_key(p.stem)
            if key in found:
                raise ValueError(f"{folder}: {found[key].name} and {p.name} have the same pairing key {key!r}")
            found[key] = p
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return found


def read_caption_jsonl(path: str | Path) -> dict[str, str]:
    """{pair_key of image_path's file name: long_caption} from an NSARM/Infinity caption jsonl.

    The `image_path` values point into the authors' machine, so only the file name is used.
    """
    path = Path(path)
    captions: dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            missing = [k for k in ("image_path", "h_div_w", "long_caption") if k not in rec]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing field(s) {missing}")
            if not isinstance(rec["long_caption"], str):
                raise ValueError(f"{path}:{lineno}: long_caption must be a string")
            captions[pair_key(Path(str(rec["image_path"])).stem)] = rec["long_caption"]
    return captions


def paired_images(src_dir: str | Path, hr_dir: str | Path | None, kind: str) -> tuple[dict, dict]:
    """`list_images` of `src_dir` and of the optional `hr_dir`, both keyed by `pair_key`.

    Raises:
        ValueError when an HR folder is given but some `kind` ("LR"/"SR") image has no HR partner (names listed).
    """
    srcs = list_images(src_dir)
    hrs = list_images(hr_dir) if hr_dir is not None else {}
    if hr_dir is not None:
        unpaired = sorted(set(srcs) - set(hrs))
        if unpaired:
            raise ValueError(f"{len(unpaired)} {kind} image(s) in {src_dir} have no HR in {hr_dir}: {unpaired[:5]}")
    return srcs, hrs


def folder_testset(name: str, lr_dir: str | Path, hr_dir: str | Path | None = None,
                   captions: str | Path | None = None) -> TestSet:
    """A test set from an LR folder, an optional HR folder (paired by key) and an optional caption jsonl.

    Raises:
        ValueError when an HR folder is given but some LR image has no HR partner (names listed).
    """
    lrs, hrs = paired_images(lr_dir, hr_dir, "LR")
    caps = read_caption_jsonl(captions) if captions is not None else {}
    images = tuple(TestImage(k, p, hrs.get(k), caps.get(k)) for k, p in lrs.items())
    return TestSet(name, images)


def nsarm_testset(name: str, root: str | Path, hr_dir: str | Path | None = None) -> TestSet:
    """RealSR / DRealSR / RP60 in the NSARM release layout under `root` (the repo's `data/test`)."""
    key = name.lower()
    if key not in LAYOUTS:
        raise ValueError(f"unknown test set {name!r}; known: {sorted(LAYOUTS)}")
    if key == "rp60" and hr_dir is not None:
        raise ValueError("RP60 (RealPhoto60) has no ground truth; do not pass an HR folder")
    lr_name, cap_name = LAYOUTS[key]
    root = Path(root)
    cap = root / "path_caption" / cap_name
    return folder_testset(key, root / "data" / lr_name, hr_dir, cap if cap.is_file() else None)


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3); a clear error names an unreadable file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from None


def write_png(img_HW3: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img_HW3).save(path, format="PNG")
    return path


# ------------------------------------------------------------------------------------------------ synthetic set
# A degrader maps (hr uint8 (H, W, 3), sample key, dataset seed) -> LR uint8 (H/4, W/4, 3); it derives the
# sample's randomness from (seed, key), so an image's LR does not depend on which other images are in the set.
Degrader = Callable[[np.ndarray, str, int], np.ndarray]


def default_degrader(preset: str = "realesrgan") -> Degrader:
    """The project's Real-ESRGAN pipeline (`degradation.pipeline.degrade`, paper default preset), imported lazily."""
    try:
        from degradation.config import degradation_config
        from degradation.pipeline import degrade
    except ImportError as e:
        raise ImportError(f"the degradation library is not importable ({e}); pass degrade_fn explicitly") from None
    cfg = degradation_config(preset)

    def run(hr: np.ndarray, key: str, seed: int) -> np.ndarray:
        import torch

        lr_B3hw, _params = degrade(torch.from_numpy(hr).permute(2, 0, 1)[None], [key], cfg, seed)
        return lr_B3hw[0].permute(1, 2, 0).contiguous().numpy()

    return run


def resize_short_side_and_centre_crop(img_HW3: np.ndarray, size: int) -> np.ndarray:
    """NSARM `add_deg.py`'s `transform`: LANCZOS-resize so the short side is `size` (the long side truncated to an
    int, as there; smaller photos are enlarged, as there), then cut the centre `size`² crop."""
    from PIL import Image

    h, w = img_HW3.shape[:2]
    if w / h <= 1:  # portrait or square: the width becomes `size`
        new_w, new_h = size, int(size / (w / h))
    else:
        new_w, new_h = int((w / h) * size), size
    resized = np.asarray(Image.fromarray(img_HW3).resize((new_w, new_h), resample=Image.LANCZOS), dtype=np.uint8)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.ascontiguousarray(resized[top:top + size, left:left + size])


def build_synthetic_testset(hr_dir: str | Path, out_dir: str | Path, *, size: int = 1024, seed: int = 0,
                            degrade_fn: Degrader | None = None, limit: int | None = None) -> TestSet:
    """The paper's synthetic (DIV2K) set: each HR photo through `resize_short_side_and_centre_crop` to `size`²,
    then degraded (randomness from `seed` and the image key), both saved.

    Writes `{out_dir}/HR/{key}.png` and `{out_dir}/LR/{key}.png`; a rerun with the same arguments rewrites the
    same bytes.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    degrade = degrade_fn or default_degrader()
    out_dir = Path(out_dir)
    images = []
    for key, path in sorted(list_images(hr_dir).items()):
        if limit is not None and len(images) >= limit:
            break
        hr = resize_short_side_and_centre_crop(read_rgb(path), size)
        lr = degrade(hr, key, seed)
        if lr.dtype != np.uint8 or lr.ndim != 3:
            raise ValueError(f"degrade_fn returned {lr.dtype} {lr.shape} for {key}; expected uint8 (h, w, 3)")
        images.append(TestImage(key, write_png(lr, out_dir / "LR" / f"{key}.png"),
                                write_png(hr, out_dir / "HR" / f"{key}.png")))
    return TestSet(f"synthetic-{Path(hr_dir).name}", tuple(images))

"""Bundled real photographs (the sample photos that ship inside scikit-image, no download) and an
Unsplash-style `photos.tsv` pointing at them, so tests and the demo exercise the real source/download path.

    python -m dataset.samples OUT_DIR            # export the photos into OUT_DIR/photos/
    nsarm serve-photos OUT_DIR --port 8800       # serve them and write OUT_DIR/photos.tsv (see dataset/httpserve.py)
"""

from __future__ import annotations

import csv
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# Real photographs in scikit-image's data folder (public domain / CC0, see skimage/data/README.txt).
# Colour photos first; the grey ones exercise the L -> RGB path. Sizes are (width, height).
SAMPLE_PHOTOS: tuple[str, ...] = (
    "astronaut.png",  # 512x512, NASA
    "chelsea.png",  # 451x300, cat
    "coffee.png",  # 600x400
    "hubble_deep_field.jpg",  # 1000x872
    "motorcycle_left.png",  # 741x500
    "motorcycle_right.png",  # 741x500
    "retina.jpg",  # 1411x1411
    "rocket.jpg",  # 640x427
    "camera.png",  # 512x512, grey
    "moon.png",  # 512x512, grey
    "grass.png",  # 512x512, grey
    "gravel.png",  # 512x512, grey
)

# Columns of the Unsplash Lite/Full dataset `photos.tsv*` (unsplash/datasets, docs/photos.md); we fill the ones a
# builder reads and leave the rest empty, exactly as rows with missing values appear in the real files.
UNSPLASH_COLUMNS: tuple[str, ...] = (
    "photo_id", "photo_url", "photo_image_url", "photo_submitted_at", "photo_featured", "photo_width",
    "photo_height", "photo_aspect_ratio", "photo_description", "photographer_username", "photographer_first_name",
    "photographer_last_name", "exif_camera_make", "exif_camera_model", "exif_iso", "exif_aperture_value",
    "exif_focal_length", "exif_exposure_time", "photo_location_name", "photo_location_latitude",
    "photo_location_longitude", "photo_location_country", "photo_location_city", "stats_views", "stats_downloads",
    "ai_description", "ai_primary_landmark_name", "ai_primary_landmark_latitude", "ai_primary_landmark_longitude",
    "ai_primary_landmark_confidence", "blur_hash",
)


@dataclass(frozen=True)
class SamplePhoto:
    photo_id: str  # dot-free key, e.g. "skimage-astronaut"
    path: Path  # file on disk
    width: int
    height: int


def skimage_data_dir() -> Path:
    """The folder of scikit-image's bundled sample images."""
    import skimage.data

    return Path(skimage.data.__file__).parent


def export_sample_photos(dest: str | Path, names: tuple[str, ...] = SAMPLE_PHOTOS) -> list[SamplePhoto]:
    """Copy the bundled photos (original bytes, original format) into `dest`; idempotent.

    Raises:
        FileNotFoundError: a named photo is not in the installed scikit-image (names the file and the folder).
    """
    src_dir, dest = skimage_data_dir(), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    photos = []
    for name in names:
        src = src_dir / name
        if not src.is_file():
            raise FileNotFoundError(f"sample photo {name!r} not found in {src_dir} (scikit-image installed?)")
        out = dest / name
        if not out.exists() or out.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, out)
        with Image.open(out) as im:
            w, h = im.size
        photos.append(SamplePhoto(f"skimage-{Path(name).stem.replace('_', '-')}", out, w, h))
    return photos


def write_unsplash_tsv(photos: list[SamplePhoto], base_url: str, out: str | Path) -> Path:
    """Write an Unsplash-style `photos.tsv` whose `photo_image_url` points at `base_url/<file name>`.

    Like the real dataset, the URL has no parameters; the builder appends `?w=…&fit=max&fm=…&q=…`, which
    `ImgixServer` honours like the CDN (a plain `PhotoServer` ignores them).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=UNSPLASH_COLUMNS, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        for p in photos:
            stem = p.path.stem.replace("_", " ")
            writer.writerow({
                "photo_id": p.photo_id,
                "photo_url": f"{base_url.rstrip('/')}/{p.path.name}",
                "photo_image_url": f"{base_url.rstrip('/')}/{p.path.name}",
                "photo_width": p.width,
                "photo_height": p.height,
                "photo_aspect_ratio": round(p.width / p.height, 2),
                "photo_description": f"a photograph: {stem}",
                "ai_description": f"{stem} photo from the scikit-image sample set",
                "photographer_username": "skimage",
            })
    return out


if __name__ == "__main__":
    for photo in export_sample_photos(Path(sys.argv[1]) / "photos"):
        print(photo.photo_id, photo.path, f"{photo.width}x{photo.height}")

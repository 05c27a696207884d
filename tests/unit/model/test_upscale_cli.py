"""`nsarm upscale` end to end on a real photo with a saved tiny checkpoint (+ its text encoder)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from nsarm.checkpoints import save_checkpoint
from nsarm.cli import main


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, fast_model, tiny_text_encoder):
    return save_checkpoint(fast_model, tmp_path_factory.mktemp("ckpt") / "tiny", text_encoder=tiny_text_encoder)


@pytest.fixture(scope="module")
def small_photos(sample_photos, tmp_path_factory):
    """Two real photos shrunk to a few tiles (the tiny model's LR tile is 64 px), one PNG and one JPEG."""
    out = tmp_path_factory.mktemp("lr")
    colour = [p for p in sample_photos if Image.open(p.path).mode == "RGB"][:2]
    paths = []
    for p, (size, ext) in zip(colour, [((80, 64), "png"), ((64, 64), "jpg")], strict=True):
        dst = out / f"{p.photo_id}.{ext}"
        Image.open(p.path).convert("RGB").resize(size, Image.BICUBIC).save(dst)
        paths.append(dst)
    return paths


def test_upscale_file_gives_4x_png(tiny_checkpoint, small_photos, tmp_path, capsys):
    src = small_photos[0]  # 80 x 64: two overlapping 64-px tiles
    args = ["upscale", str(src), str(tmp_path / "a.png"), "--checkpoint", str(tiny_checkpoint), "--seed", "3",
            "--caption", "a photo"]
    assert main(args) == 0
    sr = Image.open(tmp_path / "a.png")
    assert sr.format == "PNG" and sr.size == (320, 256) and sr.mode == "RGB"
    assert str(tmp_path / "a.png") in capsys.readouterr().out
    # the colour-fixed output follows the photo (random weights add detail, not a different picture)
    thumb = sr.resize((20, 16), Image.BOX).tobytes()
    photo = Image.open(src).resize((20, 16), Image.BOX).tobytes()
    diff = sum(abs(a - b) for a, b in zip(thumb, photo, strict=True))
    assert diff < 0.5 * sum(abs(a - (255 - b)) for a, b in zip(thumb, photo, strict=True))


def test_upscale_folder_with_caption_file(tiny_checkpoint, small_photos, tmp_path):
    folder = small_photos[0].parent
    caps = tmp_path / "caps.jsonl"
    caps.write_text("\n".join(json.dumps({"image_path": f"x/{p.name}", "long_caption": "a photo"}) for p in small_photos))
    assert main(["upscale", str(folder), str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint),
                 "--caption-file", str(caps), "--batch-size", "8"]) == 0
    for p in small_photos:
        w, h = Image.open(p).size
        assert Image.open(tmp_path / "out" / f"{p.stem}.png").size == (4 * w, 4 * h)


def test_errors_name_the_problem(tiny_checkpoint, small_photos, tmp_path, capsys):
    ck = ["--checkpoint", str(tiny_checkpoint)]
    assert main(["upscale", str(tmp_path / "nope.png"), str(tmp_path / "o.png"), *ck]) == 2
    assert "input not found" in capsys.readouterr().err
    gif = tmp_path / "x.gif"
    Image.new("RGB", (8, 8)).save(gif)
    assert main(["upscale", str(gif), str(tmp_path / "o.png"), *ck]) == 2
    err = capsys.readouterr().err
    assert "unsupported image" in err and "x.gif" in err
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    assert main(["upscale", str(bad), str(tmp_path / "o.png"), *ck]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["upscale", str(small_photos[0]), str(tmp_path / "o.png"), "--checkpoint", str(tmp_path / "none")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["upscale", str(small_photos[0]), str(tmp_path / "o.png"), *ck, "--tile", "128"]) == 2
    assert "only runs on 64" in capsys.readouterr().err

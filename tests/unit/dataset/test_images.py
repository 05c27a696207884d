"""Decode + normalise: every hostile/odd encoding of a real photo, EXIF orientation, size rules, JPEG output."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dataset.config import ShardConfig
from dataset.hostile import EXPECTED, bomb_png, hostile_files
from dataset.images import ImageRejected, crop_resize_encode, decode_rgb, normalise, sniff_format

CFG = ShardConfig(image_size=256, min_side=256)


@pytest.fixture(scope="module")
def files(sample_photos):
    return hostile_files(next(p for p in sample_photos if p.photo_id == "skimage-coffee").path)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_hostile_file_gets_its_expected_outcome(files, name):
    status, reason = EXPECTED[name]
    if status == "success":
        jpeg, info = normalise(files[name], CFG)
        assert sniff_format(jpeg) == "jpeg"
        with Image.open(io.BytesIO(jpeg)) as im:
            assert (im.mode, im.size) == ("RGB", (256, 256))
    else:
        with pytest.raises(ImageRejected) as e:
            normalise(files[name], CFG)
        assert e.value.reason == reason


def test_converted_modes_keep_the_picture(files):
    plain = decode_rgb(normalise(files["plain.jpg"], CFG)[0]).astype(int)
    cmyk = decode_rgb(normalise(files["cmyk.jpg"], CFG)[0]).astype(int)
    assert np.abs(cmyk - plain).mean() < 8  # CMYK → RGB: same photo
    gray = decode_rgb(normalise(files["gray16.png"], CFG)[0]).astype(int)
    assert np.array_equal(gray[..., 0], gray[..., 2])
    assert np.abs(gray[..., 0] - plain.mean(-1)).mean() < 12  # 16-bit → 8-bit keeps the brightness scale
    rgba = decode_rgb(normalise(files["rgba.png"], CFG)[0]).astype(int)
    assert rgba[:100].min() > 245  # transparent top half composited over white
    assert np.abs(rgba[150:] - plain[150:]).mean() < 8  # the opaque half is the photo
    pal = decode_rgb(normalise(files["palette.gif"], CFG)[0]).astype(int)
    assert np.abs(pal - plain).mean() < 12  # 64-colour palette → RGB
    la = decode_rgb(normalise(files["la.png"], CFG)[0]).astype(int)
    assert np.abs(la[..., 0] - (plain.mean(-1) * 128 + 255 * 127) / 255).mean() < 12  # grey, half alpha on white


def test_exif_orientation_is_applied():
    arr = np.zeros((300, 400, 3), np.uint8)
    arr[:, :200] = (255, 0, 0)  # left half red, right half blue (as stored)
    arr[:, 200:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: stored-left becomes displayed-top
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    jpeg, info = normalise(buf.getvalue(), ShardConfig(image_size=256, min_side=256))
    out = decode_rgb(jpeg)
    assert info.exif_rotated and (info.width, info.height) == (300, 400)
    assert out[:100, :, 0].mean() > 200 and out[-100:, :, 2].mean() > 200


def test_too_small_or_upscaled_by_config():
    small = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(small, "PNG")
    with pytest.raises(ImageRejected, match="too_small.*300x200"):
        normalise(small.getvalue(), CFG)
    jpeg, _ = normalise(small.getvalue(), ShardConfig(image_size=256, min_side=256, upscale_small=True))
    assert decode_rgb(jpeg).shape == (256, 256, 3)
    one = io.BytesIO()
    Image.new("RGB", (1, 1)).save(one, "PNG")
    with pytest.raises(ImageRejected, match="too_small"):  # even with upscaling: below upscale_min_side
        normalise(one.getvalue(), ShardConfig(image_size=256, min_side=256, upscale_small=True))


def test_bomb_is_rejected_from_the_header_and_by_our_own_limit():
    data = bomb_png()
    assert len(data) < 10_000
    with pytest.raises(ImageRejected) as e:
        normalise(data, CFG)
    assert e.value.reason == "decompression_bomb"
    ok = io.BytesIO()
    Image.new("RGB", (600, 600)).save(ok, "PNG")
    with pytest.raises(ImageRejected, match="decompression_bomb.*600x600"):
        normalise(ok.getvalue(), ShardConfig(image_size=256, min_side=256, max_pixels=300_000))


def test_centre_crop_then_area_resize():
    img = np.zeros((200, 400, 3), np.uint8)
    img[:, 100:300] = 255  # the centre square is white, the sides black
    out = decode_rgb(crop_resize_encode(img, 100, 95))
    assert out.shape == (100, 100, 3) and out.min() > 240


def test_jpeg_draft_decoding_matches_full_decoding(sample_photos):
    retina = next(p for p in sample_photos if p.photo_id == "skimage-retina").path.read_bytes()  # 1411² JPEG
    fast = decode_rgb(normalise(retina, ShardConfig(image_size=256, min_side=256))[0]).astype(int)
    full = decode_rgb(normalise(retina, ShardConfig(image_size=256, min_side=256, jpeg_draft=False))[0]).astype(int)
    assert np.abs(fast - full).mean() < 3


def test_an_image_larger_than_the_photo_it_claims_to_be_is_rejected_as_upscaled(files):
    plain = files["plain.jpg"]
    with Image.open(io.BytesIO(plain)) as im:
        w, h = im.size
    with pytest.raises(ImageRejected) as e:
        normalise(plain, CFG, source_size=(w // 2, h // 2))  # the row says half that size: the server enlarged it
    assert e.value.reason == "upscaled" and f"{w}x{h}" in e.value.detail and f"{w // 2}x{h // 2}" in e.value.detail
    assert normalise(plain, CFG, source_size=(4 * h, 4 * w))[1].width == w  # CDN-downsized (rotated row): fine
    assert normalise(plain, CFG, source_size=(w, h))[1].height == h

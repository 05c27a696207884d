"""Test-set loaders (NSARM layouts, caption jsonl, synthetic set) and scoring folders / an upscale function."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
from PIL import Image

from nsarm.eval.evaluate import match_size, score_folder, score_testset, summarize
from nsarm.eval.testsets import (
    build_synthetic_testset,
    folder_testset,
    nsarm_testset,
    pair_key,
    read_caption_jsonl,
    read_rgb,
    write_png,
)


def bicubic(img: np.ndarray, factor: float) -> np.ndarray:
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((round(w * factor), round(h * factor)), Image.BICUBIC))


@pytest.mark.parametrize("stem,key", [("Canon_001_LR4", "Canon_001"), ("Canon_001_HR", "Canon_001"),
                                      ("sony_1_x1", "sony_1"), ("sony_1_x4", "sony_1"), ("01", "01"),
                                      ("DSC_1454_x1", "DSC_1454")])
def test_pair_key(stem, key):
    assert pair_key(stem) == key


@pytest.fixture
def nsarm_layout(tmp_path, photo_pairs):
    """A miniature of the NSARM release: data/test/{data/RealSR_LR_256, path_caption/RealSR_256.jsonl} + HR."""
    root = tmp_path / "test"
    lines = []
    for i, (_name, hr, _sr) in enumerate(photo_pairs[:3]):
        write_png(hr, tmp_path / "RealSR_HR" / f"Canon_00{i}_HR.png")
        write_png(bicubic(hr, 0.25), root / "data" / "RealSR_LR_256" / f"Canon_00{i}_LR4.png")
        lines.append(json.dumps({"image_path": f"/home/x/RealSR_LR_256/Canon_00{i}_LR4.png", "h_div_w": 1,
                                 "long_caption": f"caption {i}", "long_caption_type": "llava-v1.5-13b"}))
    (root / "path_caption").mkdir(parents=True)
    (root / "path_caption" / "RealSR_256.jsonl").write_text("\n".join(lines) + "\n")
    return root, tmp_path / "RealSR_HR"


def test_nsarm_layout_pairs_lr_hr_and_captions(nsarm_layout):
    root, hr_dir = nsarm_layout
    ts = nsarm_testset("RealSR", root, hr_dir)
    assert ts.name == "realsr" and len(ts) == 3 and ts.has_hr
    assert [im.key for im in ts.images] == ["Canon_000", "Canon_001", "Canon_002"]
    assert [im.caption for im in ts.images] == ["caption 0", "caption 1", "caption 2"]
    assert ts.images[1].hr_path.name == "Canon_001_HR.png"
    assert not nsarm_testset("realsr", root).has_hr
    with pytest.raises(ValueError, match="no ground truth"):
        nsarm_testset("rp60", root, hr_dir)
    with pytest.raises(ValueError, match="unknown test set"):
        nsarm_testset("div2k", root)
    (hr_dir / "Canon_002_HR.png").unlink()
    with pytest.raises(ValueError, match="no HR in .*Canon_002"):
        nsarm_testset("realsr", root, hr_dir)


def test_caption_jsonl_errors_name_the_line(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"image_path": "a.png", "h_div_w": 1, "long_caption": "x"}\n{"image_path": "b.png"}\n')
    with pytest.raises(ValueError, match="c.jsonl:2: missing field.*h_div_w"):
        read_caption_jsonl(bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="c.jsonl:1: not JSON"):
        read_caption_jsonl(bad)


def test_synthetic_set_is_seeded_and_reproducible(tmp_path, sample_photos):
    hr_dir = sample_photos[0].path.parent

    def degrade(hr, key, seed):  # stand-in for the Real-ESRGAN pipeline: seeded noise + 4x bicubic down
        noise = np.random.default_rng([seed, zlib.crc32(key.encode())]).integers(-8, 9, hr.shape)
        return bicubic(np.clip(hr.astype(int) + noise, 0, 255).astype(np.uint8), 0.25)

    a = build_synthetic_testset(hr_dir, tmp_path / "a", size=400, seed=7, degrade_fn=degrade, limit=3)
    b = build_synthetic_testset(hr_dir, tmp_path / "b", size=400, seed=7, degrade_fn=degrade, limit=3)
    c = build_synthetic_testset(hr_dir, tmp_path / "c", size=400, seed=8, degrade_fn=degrade, limit=3)
    assert len(a) == 3 and a.has_hr
    for ia, ib, ic in zip(a.images, b.images, c.images, strict=True):
        assert ia.lr_path.read_bytes() == ib.lr_path.read_bytes()  # same seed -> same bytes
        assert ia.lr_path.read_bytes() != ic.lr_path.read_bytes()  # another seed -> another degradation
        assert read_rgb(ia.hr_path).shape == (400, 400, 3) and read_rgb(ia.lr_path).shape == (100, 100, 3)


def test_synthetic_hr_follows_nsarm_add_deg_geometry(tmp_path, sample_photos):
    """add_deg.py: LANCZOS-resize the short side to the target (long side int-truncated), then centre crop."""
    from PIL import Image

    by_id = {p.photo_id: p.path for p in sample_photos}
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    (hr_dir / "chelsea.png").write_bytes(by_id["skimage-chelsea"].read_bytes())  # 451x300, landscape
    ts = build_synthetic_testset(hr_dir, tmp_path / "out", size=256, seed=0,
                                 degrade_fn=lambda hr, key, seed: bicubic(hr, 0.25))
    with Image.open(by_id["skimage-chelsea"]) as im:
        assert im.size == (451, 300)
        # short side 300 -> 256, long side int(451 / 300 * 256) = 384; centre crop starts at (384 - 256) // 2 = 64
        want = np.asarray(im.convert("RGB").resize((384, 256), Image.LANCZOS))[:, 64:320]
    got = read_rgb(ts.images[0].hr_path)
    assert got.shape == (256, 256, 3) and np.array_equal(got, want)
    # a photo smaller than the target is enlarged, not skipped (as add_deg.py does)
    small = build_synthetic_testset(hr_dir, tmp_path / "big", size=512, seed=0,
                                    degrade_fn=lambda hr, key, seed: bicubic(hr, 0.25))
    assert read_rgb(small.images[0].hr_path).shape == (512, 512, 3)


def test_synthetic_set_with_the_project_degradation(tmp_path, sample_photos):
    pytest.importorskip("degradation.pipeline")
    a = build_synthetic_testset(sample_photos[0].path.parent, tmp_path / "a", size=256, seed=0, limit=1)
    b = build_synthetic_testset(sample_photos[0].path.parent, tmp_path / "b", size=256, seed=0, limit=1)
    assert read_rgb(a.images[0].lr_path).shape == (64, 64, 3)
    assert a.images[0].lr_path.read_bytes() == b.images[0].lr_path.read_bytes()  # seeded by (seed, key)
    hr_small = bicubic(read_rgb(a.images[0].hr_path), 0.25)
    assert not np.array_equal(read_rgb(a.images[0].lr_path), hr_small)  # degraded, not just resized


def test_match_size_follows_the_paper_protocol(photo_pairs):
    _, hr, _ = photo_pairs[0]
    big = bicubic(hr, 2.0)
    assert match_size(big, hr.shape[:2], "k").shape == hr.shape
    with pytest.raises(ValueError, match="not an integer multiple"):
        match_size(big[:, :-3], hr.shape[:2], "k")


def test_score_folder_and_upscale_fn_agree(tmp_path, basic_suite, photo_pairs):
    hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
    for i, (_name, hr, sr) in enumerate(photo_pairs):
        write_png(hr, hr_dir / f"img{i}_HR.png")
        write_png(bicubic(sr, 2.0), sr_dir / f"img{i}_LR4.png")  # SR saved 2x larger: scored at HR size
    folder = score_folder(basic_suite, sr_dir, hr_dir).set_index("key")
    assert len(folder) == 4 and (folder["height"] == 128).all()
    assert folder["psnr"].between(20, 45).all() and "combined" not in folder.columns  # NR deep metrics absent

    ts = folder_testset("toy", hr_dir, hr_dir)  # LR = HR: the upscaler below restores the saved SR exactly
    srs = {pair_key(p.stem): read_rgb(p) for p in sr_dir.iterdir()}
    outputs = iter([srs[im.key] for im in ts.images])  # batches arrive in test-set order
    seen_captions = []

    def upscale(lrs, captions=None):
        seen_captions.extend(captions)
        return [next(outputs) for _ in lrs]

    model = score_testset(basic_suite, ts, upscale, sr_out_dir=tmp_path / "out", batch_size=3).set_index("key")
    assert seen_captions == [None] * 4
    assert np.allclose(model.loc[folder.index, "psnr"], folder["psnr"])  # same images -> same scores
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"img{i}.png" for i in range(4)]
    assert (model["upscale_seconds"] > 0).all()  # every image was timed (a missing time would be 0 or NaN)
    means = summarize(model.reset_index(), ["psnr", "ssim", "niqe"])
    assert means["psnr"] == pytest.approx(folder["psnr"].mean()) and not math.isnan(means["niqe"])

    with pytest.raises(ValueError, match="must be uint8"):
        score_testset(basic_suite, ts, lambda lrs: [lr.astype(np.float32) for lr in lrs])
    with pytest.raises(ValueError, match="returned 1 images for a batch of 2"):
        score_testset(basic_suite, ts, lambda lrs: lrs[:1], batch_size=2)
    write_png(photo_pairs[0][1], tmp_path / "partial" / "img0_HR.png")
    with pytest.raises(ValueError, match="3 SR image.* no HR in"):
        score_folder(basic_suite, sr_dir, tmp_path / "partial")


def test_a_bad_image_is_named_in_the_error(tmp_path, basic_suite, photo_pairs):
    write_png(photo_pairs[0][2], tmp_path / "sr" / "good.png")
    write_png(photo_pairs[0][2][:64, :64], tmp_path / "sr" / "tiny.png")
    with pytest.raises(ValueError, match="image 'tiny': NIQE needs"):
        score_folder(basic_suite, tmp_path / "sr")
    (tmp_path / "sr" / "tiny.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match="cannot decode image .*tiny.png"):
        score_folder(basic_suite, tmp_path / "sr")

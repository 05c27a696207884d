"""The Unsplash path against an imgix-like CDN on loopback (`ImgixServer`: q=75 re-encode and fit=clip enlargement
by default, like images.unsplash.com): every request asks for lossless, never-enlarged output, rows whose TSV size
is already too small are never requested, and what lands in the shard is the photo with no extra JPEG generation.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from dataset import contract
from dataset.build import build_shards
from dataset.config import PRESETS
from dataset.httpserve import imgix_render, serve_sample_photos
from dataset.images import crop_resize_encode
from dataset.samples import write_unsplash_tsv
from dataset.shard import read_parquet

pytestmark = pytest.mark.integration

ODD_ID = "-0aB_cD1eF_"  # Unsplash ids may start with '-' and end with '_'
# long timeouts: the fake renders PNGs on a shared 2-core box, and a retry would be a second request
CFG = PRESETS["tiny"].override(image_size=512, min_side=512, shard_size=16, threads=4, read_timeout=30.0,
                               total_timeout=60.0)
SMALL = {"coffee.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg"}  # short side < 512 in the TSV


def _edit_tsv(tsv, edits: dict[str, dict]) -> None:
    """Change columns of the rows whose photo_image_url ends with a file name (photos.tsv written by samples)."""
    with open(tsv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        fields, rows = reader.fieldnames, list(reader)
    for row in rows:
        row.update(edits.get(row["photo_image_url"].rsplit("/", 1)[-1], {}))
    with open(tsv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def imgix_source(tmp_path_factory):
    """The demo's own server (bundled photos behind ImgixServer) and its photos.tsv, with chelsea's size unknown
    (fit=clip would enlarge it to the requested 1024 wide) and astronaut under an id with a leading '-'."""
    root = tmp_path_factory.mktemp("imgix")
    server, tsv = serve_sample_photos(root, port=0)
    _edit_tsv(tsv, {"chelsea.png": {"photo_width": "", "photo_height": ""}, "astronaut.png": {"photo_id": ODD_ID}})
    yield server, tsv
    server.stop()


def test_every_request_is_full_quality_never_enlarged_and_small_rows_are_not_requested(imgix_source, tmp_path):
    server, tsv = imgix_source
    before = len(server.requests)
    summary = build_shards(str(tsv), str(tmp_path / "ds"), CFG, use_ray=False)
    requests = server.requests[before:]
    assert requests and all(q.get("fit") == "max" and q.get("fm") == "png" and q.get("q") == "100"
                            for _, q in requests), requests
    requested = {path for path, _ in requests}
    assert requested.isdisjoint(SMALL) and "chelsea.png" in requested and len(requested) == 12 - len(SMALL)
    rows = {r["photo_id"]: r for r in read_parquet(contract.hr_parquet(str(tmp_path / "ds"), 0))}
    assert summary["totals"]["successes"] == 7 and summary["totals"]["error_counts"] == {"too_small": 5}
    for name in SMALL:  # recorded, with the size from the row, without a request
        row = next(r for r in rows.values() if r["source"].split("?")[0].endswith(name))
        assert (row["error"], row["attempts"], row["http_status"]) == ("too_small", 0, None)
        assert "source row" in row["error_detail"] and row["original_width"] > 0
    chelsea = rows["skimage-chelsea"]  # unknown size: asked for w=1024, came back 451x300 thanks to fit=max
    assert (chelsea["status"], chelsea["error"], chelsea["http_status"]) == ("failed_to_process", "too_small", 200)
    assert ODD_ID in rows and rows[ODD_ID]["key"] == ODD_ID and rows[ODD_ID]["status"] == "success"


def test_samples_carry_both_sizes_and_no_extra_jpeg_generation(imgix_source, sample_photos, tmp_path):
    server, tsv = imgix_source
    root = str(tmp_path / "ds")
    build_shards(str(tsv), root, CFG, use_ray=False)
    photos = {p.path.name: p for p in sample_photos}
    parquet = {r["key"]: r for r in read_parquet(contract.hr_parquet(root, 0))}
    samples = list(contract.iter_tar_samples(contract.hr_tar(root, 0)))
    assert len(samples) == 7
    for key, files, err in samples:
        assert err is None
        meta, rec = json.loads(files["json"]), parquet[key]
        photo = photos[meta["source"].split("?")[0].rsplit("/", 1)[-1]]
        assert meta["photo_id"] == rec["photo_id"] == key == meta["meta"]["photo_id"]
        assert (meta["original_width"], meta["original_height"]) == (photo.width, photo.height)
        query = dict(kv.split("=") for kv in meta["source"].split("?")[1].split("&"))
        # the lossless resize the CDN can make at this width: the shard holds exactly it, re-encoded once (q95)
        delivered, _ = imgix_render(photo.path.read_bytes(), {"w": query["w"], "fit": "max", "fm": "png"})
        with Image.open(io.BytesIO(delivered)) as im:
            assert (rec["delivered_width"], rec["delivered_height"]) == im.size
            assert files["jpg"] == crop_resize_encode(im.convert("RGB"), CFG.image_size, CFG.jpeg_quality)
    hubble = next(r for r in parquet.values() if r["photo_id"] == "skimage-hubble-deep-field")
    assert (hubble["original_width"], hubble["delivered_width"]) == (1000, 588)  # two distinct sizes
    saved = contract.read_json(contract.join(root, "hr", "config.json"))["config"]
    assert (saved["unsplash_format"], saved["unsplash_quality"]) == ("png", 100)


def test_a_server_that_ignores_fit_max_is_caught_as_upscaled(photo_server, sample_photos, tmp_path):
    """A CDN that sends more pixels than the photo has (here: a static server ignoring w/fit) is an error."""
    tsv = write_unsplash_tsv(sample_photos, photo_server.base_url, tmp_path / "src" / "photos.tsv")
    _edit_tsv(tsv, {"retina.jpg": {"photo_width": "705", "photo_height": "705"}})  # the file is 1411²
    build_shards(str(tsv), str(tmp_path / "ds"), CFG, use_ray=False)
    rows = {r["key"]: r for r in read_parquet(contract.hr_parquet(str(tmp_path / "ds"), 0))}
    retina = rows["skimage-retina"]
    assert (retina["status"], retina["error"]) == ("failed_to_process", "upscaled")
    assert "1411x1411" in retina["error_detail"] and "705x705" in retina["error_detail"]
    assert rows["skimage-hubble-deep-field"]["status"] == "success"


def test_the_demo_source_still_builds_with_the_tiny_preset(tmp_path):
    server, tsv = serve_sample_photos(tmp_path / "src", port=0)
    try:
        summary = build_shards(str(tsv), str(tmp_path / "ds"), PRESETS["tiny"].override(total_timeout=60.0,
                               read_timeout=30.0), use_ray=False)
    finally:
        server.stop()
    assert summary["totals"]["successes"] == 12 and summary["totals"]["error_counts"] == {}
    assert all(q["fit"] == "max" and q["fm"] == "png" for _, q in server.requests)


def test_nsarm_shard_cli_sets_the_imgix_output(imgix_source, tmp_path, capsys):
    from nsarm.cli import main

    server, tsv = imgix_source
    before, root = len(server.requests), str(tmp_path / "ds")
    argv = ["shard", str(tsv), root, "--preset", "tiny", "--limit", "3", "--unsplash-format", "jpg",
            "--unsplash-quality", "95", "--timeout", "60"]
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["totals"]["successes"] == 3
    assert [(q["fm"], q["q"], q["fit"]) for _, q in server.requests[before:]] == [("jpg", "95", "max")] * 3
    saved = contract.read_json(contract.join(root, "hr", "config.json"))["config"]
    assert (saved["unsplash_format"], saved["unsplash_quality"]) == ("jpg", 95)


def test_min_side_above_image_size_is_checked_on_the_photo_not_on_the_cdn_resize(imgix_source, tmp_path):
    """min_side=600 with 512² crops: the CDN sends hubble (1000x872) at 588x513, which is fine; rocket (640x427)
    is too small by its row and never requested."""
    server, tsv = imgix_source
    before = len(server.requests)
    summary = build_shards(str(tsv), str(tmp_path / "ds"), CFG.override(min_side=600), use_ray=False)
    rows = {r["key"]: r for r in read_parquet(contract.hr_parquet(str(tmp_path / "ds"), 0))}
    assert rows["skimage-hubble-deep-field"]["status"] == "success"
    assert rows["skimage-retina"]["status"] == "success" and rows["skimage-rocket"]["error"] == "too_small"
    assert summary["totals"]["successes"] == 2 and {p for p, _ in server.requests[before:]} == {
        "hubble_deep_field.jpg", "retina.jpg", "chelsea.png"}  # chelsea: size unknown, so asked for

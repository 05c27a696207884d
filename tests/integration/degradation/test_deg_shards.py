"""Shard worker and Ray job on real photos: file contract, record/replay from the written files, resume, bad input,
local and moto-S3 roots, and the `nsarm degrade` CLI."""

from __future__ import annotations

import io
import json

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from dataset import contract
from degradation.config import PRESETS, deg_hash
from degradation.pipeline import replay
from degradation.worker import DegradeShard

pytestmark = pytest.mark.integration
CFG = PRESETS["realesrgan"]


def _lr_samples(root, h, shard):
    return [(k, files) for k, files, err in contract.iter_tar_samples(contract.lr_tar(root, h, shard))]


def _decode(b: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(b)) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def _check_shard(root, h, shard, hr_keys):
    """Same keys/order as HR, 64² RGB PNGs, deg.json replays to the same pixels."""
    lr = _lr_samples(root, h, shard)
    assert [k for k, _ in lr] == hr_keys
    hr = {k: f for k, f, _ in contract.iter_tar_samples(contract.hr_tar(root, shard))}
    for key, files in lr:
        assert set(files) == {"png", "deg.json"}
        img = _decode(files["png"])
        assert img.shape == (64, 64, 3)
        rec = json.loads(files["deg.json"])
        assert rec["key"] == key and rec["deg_hash"] == h
        hr_t = torch.from_numpy(_decode(hr[key]["jpg"]).copy()).permute(2, 0, 1)
        assert np.array_equal(replay(hr_t, rec["params"]).permute(1, 2, 0).numpy(), img)
    stats = contract.read_json(contract.lr_stats(root, h, shard))
    assert stats["n_ok"] == len(hr_keys) and stats["n_bad"] == 0
    return lr


def test_ray_job_local_root(tmp_path, make_hr_root, ray_local):
    from degradation.distributed import run_degradation

    root = str(tmp_path / "ds")
    keys = make_hr_root(root, per_shard=(3, 2))
    totals = run_degradation(root, CFG, seed=0)
    h = deg_hash(CFG, 0)
    assert totals["version"] == h and totals["output"] == f"lr/{h}" and totals["shards_total"] == 2
    assert totals["samples"] == 5 and totals["shards_failed"] == {}
    for shard, ks in keys.items():
        _check_shard(root, h, shard, ks)
    cfg_json = contract.read_json(contract.join(contract.lr_dir(root, h), "config.json"))
    assert cfg_json["seed"] == 0 and cfg_json["config"]["noise_range"] == [1.0, 30.0]
    # a rerun skips both shards and leaves bytes untouched
    before = open(contract.lr_tar(root, h, 0), "rb").read()
    again = run_degradation(root, CFG, seed=0)
    assert again["shards_skipped"] == 2 and again["samples"] == 5 and again["new_samples"] == 0
    assert open(contract.lr_tar(root, h, 0), "rb").read() == before
    # one worker in a plain loop over a fresh root gives byte-identical shards (worker/batch independence)
    root2 = str(tmp_path / "ds2")
    make_hr_root(root2, per_shard=(3, 2))
    DegradeShard(root2, CFG, 0, batch_size=1)(0)
    assert open(contract.lr_tar(root2, h, 0), "rb").read() == before


def test_ray_job_s3_root(s3_bucket, make_hr_root, ray_local):
    from degradation.distributed import run_degradation

    root = f"{s3_bucket}/ds"
    keys = make_hr_root(root, per_shard=(2,))
    totals = run_degradation(root, PRESETS["seesr"], seed=3)
    h = deg_hash(PRESETS["seesr"], 3)
    assert totals["samples"] == 2 and totals["shards_failed"] == {}, totals
    _check_shard(root, h, 0, keys[0])
    assert fsspec.filesystem("s3").exists(f"{root[5:]}/lr/{h}/config.json")


def test_resume_after_partial_run(tmp_path, make_hr_root):
    root = str(tmp_path / "ds")
    keys = make_hr_root(root, per_shard=(2, 2))
    worker = DegradeShard(root, CFG, 1, batch_size=4)
    h = worker.deg_hash
    assert worker(0).ok and worker(1).ok
    done0 = open(contract.lr_tar(root, h, 0), "rb").read()
    done1 = open(contract.lr_tar(root, h, 1), "rb").read()
    # simulate a crash in shard 1 after its tar was (partially) written but before its stats: corrupt tar, no stats
    fs = fsspec.filesystem("file")
    fs.rm(contract.lr_stats(root, h, 1))
    with open(contract.lr_tar(root, h, 1), "wb") as f:
        f.write(done1[:1000])
    res0, res1 = worker(0), worker(1)
    assert res0.skipped and not res1.skipped and res1.n == 2
    assert open(contract.lr_tar(root, h, 0), "rb").read() == done0
    assert open(contract.lr_tar(root, h, 1), "rb").read() == done1  # redone, identical bytes
    _check_shard(root, h, 1, keys[1])
    assert not [p for p in fs.ls(contract.lr_dir(root, h)) if ".tmp-" in p]


def test_bad_samples_are_recorded_and_skipped(tmp_path, sample_photos, hr_tools):
    import tarfile

    sample, write_hr_shard = hr_tools.sample, hr_tools.write_hr_shard

    root = str(tmp_path / "ds")
    good = [sample(p) for p in sample_photos[:2]]
    wrong_size = (sample_photos[2].photo_id, {"jpg": sample(sample_photos[2], side=200)[1]["jpg"]})
    not_square = ("rect", {"jpg": _jpeg(np.zeros((256, 200, 3), np.uint8))})
    broken = ("broken", {"jpg": good[0][1]["jpg"][:500], "json": b"{}"})
    no_image = ("meta-only", {"json": b"{}"})
    samples = [good[0], wrong_size, broken, not_square, no_image, good[1], (good[0][0], {"jpg": good[0][1]["jpg"]})]
    buf = io.BytesIO(contract.tar_bytes(samples))
    buf.seek(0, 2)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue()), mode="r:") as src, \
            tarfile.open(tmp_path / "x.tar", "w", format=tarfile.USTAR_FORMAT) as dst:
        for m in src:
            dst.addfile(m, src.extractfile(m))
        evil = tarfile.TarInfo("../../evil.jpg")
        evil.size = 3
        dst.addfile(evil, io.BytesIO(b"abc"))
    write_hr_shard(root, 0, [])
    contract.put_atomic(contract.hr_tar(root, 0), (tmp_path / "x.tar").read_bytes())

    res = DegradeShard(root, CFG, 0)(0)
    assert res.ok and res.n == 2 and res.n_bad == 6, res
    reasons = {b["key"]: b["reason"] for b in res.stats["bad"]}
    assert reasons[good[0][0]].startswith("duplicate key")
    assert "expected 256x256" in reasons[wrong_size[0]]
    assert reasons["broken"].startswith("undecodable image broken.jpg")
    assert "must be square" in reasons["rect"]
    assert reasons["meta-only"].startswith("no image member")
    assert "unsafe" in reasons["../../evil.jpg"]
    h = deg_hash(CFG, 0)
    assert [k for k, _ in _lr_samples(root, h, 0)] == [good[0][0], good[1][0]]
    stats = contract.read_json(contract.lr_stats(root, h, 0))
    assert stats["n_input"] == 8 and stats["n_bad"] == 6 and sum(stats["errors"].values()) == 6
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path.parent / "evil.jpg").exists()


def test_missing_shard_and_mixed_config_fail_cleanly(tmp_path, make_hr_root):
    root = str(tmp_path / "ds")
    make_hr_root(root, per_shard=(1,))
    res = DegradeShard(root, CFG, 0)(7)
    assert not res.ok and "000007.tar does not exist" in res.err
    h = deg_hash(CFG, 0)
    contract.write_json_atomic(contract.join(contract.lr_dir(root, h), "config.json"),
                               {"config": PRESETS["seesr"].to_dict(), "deg_hash": h, "seed": 0})
    res = DegradeShard(root, CFG, 0)(0)
    assert not res.ok and "refusing to mix" in res.err


def test_cli_degrade(tmp_path, make_hr_root, capsys):
    from nsarm.cli import main

    root = str(tmp_path / "ds")
    keys = make_hr_root(root, per_shard=(1, 1))
    assert main(["degrade", root, "--preset", "seesr", "--seed", "4", "--shards", "1"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out[-1]["samples"] == 1 and out[-1]["version"] == deg_hash(PRESETS["seesr"], 4)
    _check_shard(root, deg_hash(PRESETS["seesr"], 4), 1, keys[1])
    assert not contract.exists(contract.lr_tar(root, deg_hash(PRESETS["seesr"], 4), 0))


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()

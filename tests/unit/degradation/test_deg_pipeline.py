"""Pipeline: exact output size, per-sample determinism across batch sizes/orders, record-and-replay, configs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from degradation.config import PRESETS, DegradationConfig, deg_hash
from degradation.pipeline import degrade, degrade_batch, min_hr_side, replay, sample_params


@pytest.fixture(scope="module")
def batch(hr_photos):
    return torch.stack([t for _, t in hr_photos]), [k for k, _ in hr_photos]


@pytest.mark.parametrize("preset", ["realesrgan", "nsarm-light", "seesr"])
def test_output_is_exactly_hr_over_4_uint8(batch, preset):
    hr, keys = batch
    lr, params = degrade(hr, keys, PRESETS[preset], dataset_seed=0)
    assert lr.shape == (len(keys), 3, 64, 64) and lr.dtype == torch.uint8
    assert len(params) == len(keys)
    # degraded, not a plain downscale: compare with a bicubic downscale of the HR
    down = torch.nn.functional.interpolate(hr.float(), size=(64, 64), mode="area")
    assert (lr.float() - down).abs().mean() > 2


def test_1024_input_gives_256_output(hr_photos):
    hr = torch.nn.functional.interpolate(hr_photos[0][1][None].float(), size=(1024, 1024), mode="bilinear")
    lr, _ = degrade(hr.round().to(torch.uint8), ["big"], PRESETS["realesrgan"], dataset_seed=1)
    assert lr.shape == (1, 3, 256, 256)


def test_deterministic_across_batch_sizes_and_orders(batch):
    hr, keys = batch
    cfg = PRESETS["realesrgan"]
    full, params = degrade(hr, keys, cfg, dataset_seed=11)
    singles = torch.cat([degrade(hr[i:i + 1], [keys[i]], cfg, dataset_seed=11)[0] for i in range(len(keys))])
    assert torch.equal(full, singles)
    perm = [3, 0, 4, 2, 1]
    shuffled, _ = degrade(hr[perm], [keys[i] for i in perm], cfg, dataset_seed=11)
    assert torch.equal(shuffled, full[perm])
    pairs = torch.cat([degrade(hr[i:i + 2], keys[i:i + 2], cfg, dataset_seed=11)[0] for i in (0, 2)])
    assert torch.equal(pairs, full[:4])
    # ...and the seed matters: another dataset seed gives other LRs
    other, other_params = degrade(hr, keys, cfg, dataset_seed=12)
    assert not torch.equal(other, full) and other_params[0]["seed"] != params[0]["seed"]


def test_same_key_same_params_different_key_different_params(batch):
    hr, keys = batch
    cfg = PRESETS["realesrgan"]
    dup, params = degrade(torch.stack([hr[0], hr[0]]), ["x", "x"], cfg, dataset_seed=0)
    assert torch.equal(dup[0], dup[1]) and params[0] == params[1]
    _, p2 = degrade(torch.stack([hr[0], hr[0]]), ["x", "y"], cfg, dataset_seed=0)
    assert p2[0] != p2[1]


def test_record_and_replay_reproduces_bytes(batch):
    hr, keys = batch
    lr, params = degrade(hr, keys, PRESETS["realesrgan"], dataset_seed=5)
    for i in range(len(keys)):
        recorded = json.loads(json.dumps(params[i]))  # exactly what {key}.deg.json stores
        assert torch.equal(replay(hr[i], recorded), lr[i])
    tampered = json.loads(json.dumps(params[0]))
    tampered["jpeg1"] = tampered["jpeg1"] * 0.5
    assert not torch.equal(replay(hr[0], tampered), lr[0])  # the record really drives the output


def test_params_are_complete_and_in_range(batch):
    cfg = PRESETS["realesrgan"]
    for seed in range(40):
        p = sample_params(cfg, seed, (256, 256))
        assert set(p) >= {"seed", "hr_size", "usm", "blur1", "resize1", "noise1", "jpeg1", "blur2", "resize2",
                          "noise2", "final"}
        r1 = p["resize1"]
        assert {"up": (1, 1.5), "down": (0.15, 1), "keep": (1, 1)}[r1["updown"]][0] <= r1["scale"]
        assert r1["scale"] <= {"up": 1.5, "down": 1, "keep": 1}[r1["updown"]]
        assert cfg.jpeg_range[0] <= p["jpeg1"] <= cfg.jpeg_range[1]
        assert cfg.jpeg_range2[0] <= p["final"]["jpeg"] <= cfg.jpeg_range2[1]
        n = p["noise2"]
        assert (cfg.noise_range2[0] <= n["sigma"] <= cfg.noise_range2[1]) if n["kind"] == "gaussian" else (
            cfg.poisson_scale_range2[0] <= n["scale"] <= cfg.poisson_scale_range2[1])
        assert p["resize2"]["size"] == [int(64 * p["resize2"]["scale"])] * 2


def test_bad_inputs_are_named(batch):
    hr, keys = batch
    p = sample_params(PRESETS["realesrgan"], 0, (256, 256))
    with pytest.raises(ValueError, match="2 images but 1 parameter"):
        degrade_batch(hr[:2], [p])
    with pytest.raises(ValueError, match=r"HR \[256, 256\] applied to a 128x128"):
        degrade_batch(hr[:1, :, :128, :128], [p])


def test_config_hash_presets_and_roundtrip():
    a, b = PRESETS["realesrgan"], PRESETS["seesr"]
    assert a.hash() != b.hash() and a.hash() == DegradationConfig().hash()
    assert DegradationConfig.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert deg_hash(a, 0) != deg_hash(a, 1) and deg_hash(a, 0).startswith(a.hash())
    assert dataclasses.replace(a, jpeg_range=(31.0, 95.0)).hash() != a.hash()
    assert (b.noise_range, b.jpeg_range2, b.second_blur_prob) == ((1.0, 15.0), (60.0, 100.0), 0.5)
    assert (a.noise_range, a.resize_range, a.final_sinc_prob) == ((1.0, 30.0), (0.15, 1.5), 0.8)
    with pytest.raises(ValueError, match="unknown kernel types"):
        DegradationConfig(kernel_list=("iso", "box"), kernel_prob=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"unknown DegradationConfig field\(s\) \['noise_rang'\]"):
        DegradationConfig.from_dict({"noise_rang": [1, 2]})
    assert 140 < min_hr_side(a) <= 256  # the 256² tiny preset is valid

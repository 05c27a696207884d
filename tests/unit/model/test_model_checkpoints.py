"""Checkpoints: NSARM-8B key/param totals on meta, official layouts (.pth, trainer-wrapped, sharded safetensors),
our safetensors+config format, and clear errors for corrupted / wrong-architecture files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from nsarm.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_infinity,
    load_nsarm,
    read_model_config,
    read_state_dict,
    save_checkpoint,
)
from nsarm.model import NSARMModel, build_model, model_config


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = build_model("tiny", with_tokenizer=False).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.01)
    return model


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nsarm_8b_totals_on_meta():
    with torch.device("meta"):
        model = NSARMModel(model_config("nsarm-8b"), with_tokenizer=False)
    sd = model.official_state_dict()
    assert len(sd) == 1812
    assert sum(1 for k in sd if k.startswith("map_transformer.")) == 950
    n_params = sum(p.numel() for p in model.transformer.parameters()) + sum(p.numel() for p in model.map_transformer.parameters())
    assert n_params == 8_760_895_424


def test_official_pth_and_trainer_wrapped_round_trip(tmp_path):
    model = _tiny()
    torch.save(model.official_state_dict(), tmp_path / "NSARM.pth")
    loaded = load_nsarm(tmp_path / "NSARM.pth", "tiny")
    _same(loaded.official_state_dict(), model.official_state_dict())
    torch.save({"trainer": {"gpt_fsdp": model.transformer.state_dict()}, "args": {"lr": 1.0}}, tmp_path / "ar-ckpt.pth")
    _same(load_infinity(tmp_path / "ar-ckpt.pth", "tiny").state_dict(), model.transformer.state_dict())


def test_sharded_safetensors_directory(tmp_path):
    model = _tiny()
    sd = {k: v.contiguous() for k, v in model.transformer.state_dict().items()}
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / name))
        weight_map.update(dict.fromkeys(ks, name))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _same(load_infinity(tmp_path, "tiny").state_dict(), model.transformer.state_dict())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        load_infinity(tmp_path, "tiny")


def test_our_format_round_trip(tmp_path):
    model = _tiny()
    save_checkpoint(model, tmp_path / "ckpt")
    assert read_model_config(tmp_path / "ckpt") == model.cfg
    loaded = load_checkpoint(tmp_path / "ckpt")
    _same(loaded.state_dict(), model.state_dict())


def test_wrong_architecture_names_the_keys(tmp_path):
    model = _tiny()
    sd = model.official_state_dict()
    sd.pop("head.weight")
    sd["block_chunks.5.module.0.ada_gss"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"1 missing keys \[head.weight\].*block_chunks.5.module.0.ada_gss"):
        load_nsarm(tmp_path / "bad.pth", "tiny")
    sd = model.official_state_dict()
    sd["word_embed.weight"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"word_embed.weight: file \(3, 3\)"):
        load_nsarm(tmp_path / "shape.pth", "tiny")


def test_corrupted_files_raise_checkpoint_error(tmp_path):
    model = _tiny()
    save_checkpoint(model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "junk.pth").write_bytes(b"\x00not a pickle at all" * 10)
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_state_dict(tmp_path / "junk.pth")
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": _Evil(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="evil.pth"):  # an object pickle is refused, never executed
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="format"):
        read_model_config(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["tiny", "infinity-2b", "infinity-8b", "nsarm-8b"])
def test_model_config_json_round_trip(name):
    cfg = model_config(name)
    assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_full_model_with_tokenizer_round_trip(tmp_path, fast_model):
    save_checkpoint(fast_model, tmp_path / "full")
    loaded = load_checkpoint(tmp_path / "full")
    assert loaded.tokenizer is not None
    _same(loaded.state_dict(), fast_model.state_dict())
    assert loaded.tokenizer.quantizer is loaded.tokenizer.quantize  # the shared quantiser survives

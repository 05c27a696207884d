"""BSQ-VAE tokenizer: official key/shape manifests, loading both key styles, our file format, encode/decode."""

import json
import pickle
from pathlib import Path

import pytest
import torch

from nsarm.config import TOKENIZER_PRESETS
from nsarm.scales import schedule_for
from nsarm.tokenizer import (
    _to_model_keys,
    build_tokenizer,
    load_state_dict_into,
    load_tokenizer,
    save_tokenizer,
)

# Key names, shapes and dtypes of the released AutoEncoder, recorded by instantiating the reference implementation
# (FoundationVision/Infinity infinity/models/bsq_vae, vae_model(test_mode=True)) on the meta device.
MANIFEST = json.loads((Path(__file__).parent / "data" / "tokenizer_keys.json").read_text())
SPEC_COUNTS = {"d32-f16": (270, 110_118_115), "d14-f8-patchify": (226, 81_624_237)}  # spec §3.1/§3.3


def flux_style(key: str) -> str:
    """The official key without the wrapper level (`x.conv.weight` → `x.weight`, `x.norm.bias` → `x.bias`)."""
    for w in (".conv.", ".norm."):
        stem, sep, leaf = key.rpartition(w)
        if sep and "." not in leaf:
            return stem + "." + leaf
    return key


@pytest.mark.parametrize("preset", ["d32-f16", "d14-f8-patchify"])
def test_official_key_manifest(preset):
    with torch.device("meta"):
        tok = build_tokenizer(preset)
    sd = tok.state_dict()
    got = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in sd.items()}
    assert got == MANIFEST[preset]
    n_keys, n_elems = SPEC_COUNTS[preset]
    assert len(sd) == n_keys and sum(v.numel() for v in sd.values()) == n_elems


@pytest.mark.parametrize("preset", ["d32-f16", "d14-f8-patchify"])
def test_flux_style_keys_map_onto_every_official_key(preset):
    official = set(MANIFEST[preset])
    flux = {flux_style(k): torch.empty(0) for k in official}
    assert len(flux) == len(official) and not (set(flux) & {k for k in official if ".conv." in k})
    mapped, unexpected = _to_model_keys(flux, official)
    assert unexpected == [] and set(mapped) == official


def test_tiny_preset_contract():
    cfg = TOKENIZER_PRESETS["tiny"]
    assert (cfg.downsample, cfg.patch, cfg.codebook_dim, cfg.token_bits, cfg.token_stride) == (8, 2, 8, 32, 16)
    assert cfg.k_t == 4 and cfg.default_pn == "0.06M"
    assert TOKENIZER_PRESETS["d14-f8-patchify"].token_bits == 56 and TOKENIZER_PRESETS["d32-f16"].token_bits == 32
    tok = build_tokenizer("tiny").eval()
    # same module tree as the 8B tokenizer (4 levels, f8); only the 1×1 shortcuts differ (they follow width changes)
    def tree(keys):
        return {k for k in keys if "nin_shortcut" not in k}

    assert tree(tok.state_dict()) == tree(MANIFEST["d14-f8-patchify"])
    with torch.device("meta"):  # shapes only
        meta_tok = build_tokenizer("tiny")
        assert meta_tok.encode_raw(torch.zeros(1, 3, 64, 64)).shape == (1, 8, 8, 8)  # LR 64² → 8×8
        hr = meta_tok.encode_bits(torch.zeros(1, 3, 256, 256), schedule_for("tiny"))
        assert meta_tok.decode(hr.f_hat).shape == (1, 3, 256, 256)
    assert hr.f_hat.shape == (1, 8, 32, 32) and [b.shape[-1] for b in hr.bits] == [2, 4, 8, 12, 16, 24, 32]


def _random_tiny(seed):
    torch.manual_seed(seed)
    tok = build_tokenizer("tiny")
    with torch.no_grad():  # non-default norm affine params so a missed copy would show
        for n, p in tok.named_parameters():
            if "norm" in n:
                p.normal_()
    return tok


def test_load_official_format_in_flux_style_fills_every_parameter(tmp_path):
    src = _random_tiny(0)
    sd = {flux_style(k): v for k, v in src.state_dict().items() if "lfq.mask" not in k}
    path = tmp_path / "vae.pth"
    torch.save({"vae": sd, "step": 7}, path)  # the official files keep the weights under 'vae'
    tok = load_tokenizer(path, "tiny")
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())
    for k, v in src.state_dict().items():
        assert torch.equal(tok.state_dict()[k], v), k


def test_load_errors_name_the_problem(tmp_path):
    src = _random_tiny(1)
    sd = dict(src.state_dict())
    bad = dict(sd)
    del bad["decoder.conv_out.conv.weight"]
    bad["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 missing \['decoder.conv_out.conv.weight'\].*encoder.extra.weight"):
        load_state_dict_into(build_tokenizer("tiny"), bad)
    loose = dict(sd, **{"encoder.extra.weight": torch.zeros(1)})
    load_state_dict_into(build_tokenizer("tiny"), loose, strict=False)  # unexpected keys tolerated when asked
    shaped = dict(sd, **{"encoder.conv_in.conv.weight": torch.zeros(5, 3, 3, 3)})
    with pytest.raises(ValueError, match="wrong shapes.*encoder.conv_in.conv.weight"):
        load_state_dict_into(build_tokenizer("tiny"), shaped)
    torch.save(sd, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="pass preset="):
        load_tokenizer(tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="does not fit preset 'd14-f8-patchify'"):
        with torch.device("meta"):
            load_state_dict_into(build_tokenizer("d14-f8-patchify"), sd)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nope.pth", "tiny")


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_untrusted_pickle_does_not_execute(tmp_path):
    marker = tmp_path / "pwned"
    ex = _Exploit()
    ex.marker = str(marker)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"vae": ex}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        load_tokenizer(path, "tiny")
    assert not marker.exists()


def test_our_format_round_trip(tmp_path):
    src = _random_tiny(2)
    out = save_tokenizer(src, tmp_path / "tok" / "tiny.safetensors")
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["tokenizer"]["name"] == "tiny" and meta["tokenizer"]["ch_mult"] == [1, 1, 2, 2]
    tok = load_tokenizer(out)  # config read from the JSON beside the weights
    for k, v in src.state_dict().items():
        assert torch.equal(tok.state_dict()[k], v), k
    with pytest.raises(ValueError, match="differs from the config"):
        load_tokenizer(out, "d14-f8-patchify")
    with pytest.raises(ValueError, match=".safetensors"):
        save_tokenizer(src, tmp_path / "x.pt")


def test_encode_decode_api():
    tok = _random_tiny(3).eval()
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    grids = [(2, 2), (4, 4)]
    with torch.no_grad():
        z = tok.encode_raw(img)
        dec = tok.encode_bits(img, grids)
        out = tok.decode(dec.f_hat)
        assert torch.equal(tok.decode(dec.codes), out)  # a list of per-scale codes is summed first
        z5 = tok.encode_raw(img[:, :, None])  # official 5-D layout (B, 3, 1, H, W)
    assert z.dtype == torch.float32 and z.shape == (2, 8, 4, 4) and z5.shape == (2, 8, 1, 4, 4)
    torch.testing.assert_close(z5[:, :, 0], z)
    assert out.shape == img.shape and out.min() >= -1 and out.max() <= 1
    assert [tuple(b.shape) for b in dec.bits] == [(2, 8, 2, 2), (2, 8, 4, 4)]
    with pytest.raises(ValueError, match="multiples of 8"):
        tok.encode_raw(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"expected \(B, 8, h, w\)"):
        tok.decode(torch.zeros(1, 14, 4, 4))


def test_training_path_passes_gradient_through_quantiser():
    tok = _random_tiny(4)
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    recon, dec = tok(img, [(2, 2), (4, 4)])
    assert recon.shape == img.shape and len(dec.bits) == 2
    (recon - img).square().mean().backward()
    g = tok.encoder.conv_in.conv.weight.grad
    assert g is not None and g.abs().sum() > 0

"""Scale schedules, patchify order, Alg. 1 decomposition, BSC flips and Alg. 2 cascaded GT modification."""

import pytest
import torch
import torch.nn.functional as F

from nsarm import scales as S
from nsarm.bits import bsq_quantize

# spec §2.1: 1024×1024 ('1M', 1:1) grids.
SPEC_1M_1TO1 = [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64]


def smooth_latent(b=2, d=8, size=32, seed=0):
    """A latent with image-like structure (coarse + fine) at the magnitude of a trained VAE's codes."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.randn(b, d, 4, 4, generator=g), size=(size, size), mode="bilinear")
    return coarse * 2 + 0.3 * torch.randn(b, d, size, size, generator=g)


# -- schedules ---------------------------------------------------------------------------------------------------------


def test_square_schedules_match_spec():
    s = S.get_schedule("1M", 1.0)
    assert s.grids == tuple((n, n) for n in SPEC_1M_1TO1)
    assert s.image_size == (1024, 1024)
    tokens = {pn: S.get_schedule(pn).num_tokens for pn in ("0.06M", "0.25M", "0.60M", "1M")}
    assert tokens == {"0.06M": 521, "0.25M": 2521, "0.60M": 6425, "1M": 10521}
    assert [S.get_schedule(pn).num_scales for pn in ("0.06M", "0.25M", "0.60M", "1M")] == [7, 10, 12, 13]
    assert S.get_schedule("0.25M").image_size == (512, 512)


@pytest.mark.parametrize(
    "h_div_w, last, pixels",
    [(1.25, (70, 56), (1120, 896)), (2.0, (90, 45), (1440, 720)), (0.5, (45, 90), (720, 1440)),
     (1.333, (72, 54), (1152, 864))],
)
def test_other_aspect_ratios_match_spec(h_div_w, last, pixels):
    s = S.get_schedule("1M", h_div_w)
    assert s.grids[-1] == last and s.image_size == pixels and s.grids[:2] == ((1, 1), (2, 2))


def test_templates_and_ratio_consistency():
    assert S.H_DIV_W_TEMPLATES == (0.333, 0.4, 0.5, 0.571, 0.666, 0.75, 0.8, 1.0, 1.25, 1.333, 1.5, 1.75, 2.0, 2.5, 3.0)
    for t in S.H_DIV_W_TEMPLATES:
        for pn in ("0.06M", "0.25M", "0.60M", "1M"):  # every pn's final grid has the template's ratio (Infinity assert)
            h, w = S.get_schedule(pn, t).grids[-1]
            assert abs(h / w - t) < 0.01, (t, pn, h, w)
    assert S.nearest_h_div_w_template(1.1) == 1.0 and S.nearest_h_div_w_template(1.9) == 2.0
    assert S.nearest_h_div_w_template(0.3) == 0.333
    with pytest.raises(ValueError, match="pn"):
        S.get_schedule("2M")
    with pytest.raises(ValueError, match="h_div_w"):
        S.get_schedule("1M", 0.0)


def test_preset_schedules_and_k_t():
    tiny = S.schedule_for("tiny")
    assert tiny.grids == tuple((n, n) for n in (1, 2, 4, 6, 8, 12, 16))
    assert tiny.vae_grids == tuple((n, n) for n in (2, 4, 8, 12, 16, 24, 32))
    assert S.k_t_for("tiny") == 4 and S.k_t_for("d14-f8-patchify") == 7
    d56 = S.schedule_for("d14-f8-patchify")
    assert d56.patch == 2 and d56.vae_grids[-1] == (128, 128)
    assert S.schedule_for("d32-f16").vae_grids[-1] == (64, 64)
    assert S.schedule_for("0.25M").grids[-1] == (32, 32)
    assert S.rope_grid(1.0) == (64, 64) and S.rope_grid(2.0) == (90, 45)
    with pytest.raises(ValueError, match="neither"):
        S.schedule_for("huge")


def test_scale_loss_weights():
    grids = [(1, 1), (2, 2), (4, 4)]
    w = S.scale_loss_weights(grids)
    assert w.shape == (21,) and abs(w.sum().item() - 1) < 1e-6
    assert w[0] / w[-1] == pytest.approx(4.0)  # √(16/1)


# -- tensor helpers ----------------------------------------------------------------------------------------------------


def test_patchify_channel_order():
    x = torch.arange(2 * 3 * 4 * 6).float().view(2, 3, 4, 6)
    p = S.patchify(x, 2)
    assert p.shape == (2, 12, 2, 3)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(p[:, c * 4 + 2 * i + j], x[:, c, i::2, j::2])
    assert torch.equal(S.unpatchify(p, 2), x)
    bits = torch.randint(0, 2, (1, 4, 4, 4))
    assert torch.equal(S.unpatchify(S.patchify(bits, 2), 2), bits)  # works on int64 bit maps too


def test_resize_same_size_is_identity_and_modes():
    x = torch.randn(1, 2, 6, 6)
    assert S.resize(x, (6, 6), "area") is x
    torch.testing.assert_close(S.resize(x, (3, 3), "area"), F.avg_pool2d(x, 2))
    up = S.resize(x, (12, 12), "trilinear")
    ref = F.interpolate(x[:, :, None], size=(1, 12, 12), mode="trilinear")[:, :, 0]  # the official 5-D call
    torch.testing.assert_close(up, ref)
    with pytest.raises(ValueError, match="unknown mode"):
        S.resize(x, (3, 3), "nearest-exact")


def test_tokens_round_trip():
    x = torch.randn(2, 5, 3, 4)
    t = S.to_tokens(x)
    assert t.shape == (2, 12, 5) and torch.equal(t[:, 4], x[:, :, 1, 0])  # row-major
    assert torch.equal(S.from_tokens(t, 3, 4), x)
    parts = S.split_tokens(torch.cat([S.to_tokens(x), S.to_tokens(x[:, :, :1, :1])], 1), [(3, 4), (1, 1)])
    assert torch.equal(parts[0], x)


# -- Algorithm 1 ---------------------------------------------------------------------------------------------------


def test_alg1_reconstruction_and_last_scale_rule():
    z = smooth_latent()
    grids = S.schedule_for("tiny").vae_grids
    dec = S.decompose(z, grids)
    K = len(grids)
    assert [tuple(c.shape[-2:]) for c in dec.codes] == list(grids)
    # f̂ is exactly the sum of the up-sampled quantised residuals
    torch.testing.assert_close(dec.f_hat, S.sum_codes(dec.codes, (32, 32)))
    # last scale: no resize, so its residual is exactly z − F_{K−1} and its code is BSQ of it
    f_prev = S.sum_codes(dec.codes[:-1], (32, 32))
    torch.testing.assert_close(dec.residuals[-1], z - f_prev)
    assert torch.equal(dec.bits[-1], bsq_quantize(z - f_prev)[1])
    # every residual is the down-sampled remaining error; inputs are the resized accumulations
    for k in range(1, K):
        fk = S.sum_codes(dec.codes[:k], (32, 32))
        torch.testing.assert_close(dec.residuals[k], S.resize(z - fk, grids[k], "area"))
        torch.testing.assert_close(dec.inputs[k - 1], S.resize(fk, grids[k], "trilinear"))
    # each scale removes error from the accumulation
    errs = [(z - S.sum_codes(dec.codes[: k + 1], (32, 32))).norm().item() for k in range(K)]
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False)) and errs[-1] < 0.35 * z.norm().item()


def test_alg1_single_full_scale_is_plain_bsq_and_next_mode():
    z = smooth_latent(size=8)
    dec = S.decompose(z, [(8, 8)])
    torch.testing.assert_close(dec.f_hat, bsq_quantize(z)[0])
    # 3×3 is a non-integer factor of 8, where bilinear and area resizing differ
    a = S.decompose(z, [(2, 2), (3, 3), (8, 8)], next_mode="area")
    t = S.decompose(z, [(2, 2), (3, 3), (8, 8)])
    assert torch.equal(a.bits[2], t.bits[2])  # next_mode only changes the transformer inputs
    torch.testing.assert_close(a.inputs[0], S.resize(S.sum_codes(a.codes[:1], (8, 8)), (3, 3), "area"))
    assert not torch.allclose(a.inputs[0], t.inputs[0])
    with pytest.raises(ValueError, match="last grid"):
        S.decompose(z, [(2, 2), (4, 4)])


def test_transformer_inputs_and_labels_layout():
    z = smooth_latent()
    sched = S.schedule_for("tiny")
    dec = S.decompose(z, sched.vae_grids)
    x = S.transformer_inputs(dec, sched.patch)
    y = S.bit_labels(dec, sched.patch)
    assert x.shape == (2, sched.num_tokens - 1, 32) and y.shape == (2, sched.num_tokens, 32)
    assert y.dtype == torch.int64 and set(y.unique().tolist()) <= {0, 1}
    back = [S.unpatchify(b, 2) for b in S.split_tokens(y, sched.grids)]
    assert all(torch.equal(b, ref) for b, ref in zip(back, dec.bits, strict=True))


def test_bsc_flips_corrupt_inputs_and_relabel_later_scales():
    z = smooth_latent(seed=1)
    grids = S.schedule_for("tiny").vae_grids
    clean = S.decompose(z, grids)
    noisy = S.decompose(z, grids, flip_layers=2, flip_strength=0.3, generator=torch.Generator().manual_seed(7))
    again = S.decompose(z, grids, flip_layers=2, flip_strength=0.3, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(noisy.bits, again.bits, strict=True))
    # scale-0 label stays the clean bits; its code (which feeds the cascade) is corrupted
    assert torch.equal(noisy.bits[0], clean.bits[0])
    changed = [k for k in range(2) if not torch.equal(noisy.codes[k], bsq_quantize(noisy.residuals[k])[0])]
    assert changed, "with strength 0.3 and this seed some bits must flip"
    # later residuals are computed from the corrupted accumulation → they correct it
    f1 = S.sum_codes(noisy.codes[:2], (32, 32))
    torch.testing.assert_close(noisy.residuals[2], S.resize(z - f1, grids[2], "area"))
    # scales ≥ flip_layers are never flipped
    assert all(torch.equal(noisy.codes[k], bsq_quantize(noisy.residuals[k])[0]) for k in range(2, len(grids)))


# -- Algorithm 2 ---------------------------------------------------------------------------------------------------


def test_alg2_true_predictions_reproduce_alg1():
    z = smooth_latent(seed=2)
    grids = S.schedule_for("tiny").vae_grids
    plain = S.decompose(z, grids)
    mod = S.cascade_modify(z, grids, plain.residuals[:4])
    for a, b in zip(mod.bits, plain.bits, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(mod.inputs, plain.inputs, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(mod.f_hat, plain.f_hat)


def test_alg2_perturbed_predictions_are_corrected_by_later_targets():
    z = smooth_latent(seed=3)
    grids = S.schedule_for("tiny").vae_grids
    K_t = 4
    plain = S.decompose(z, grids)
    g = torch.Generator().manual_seed(9)
    pred = [r + 0.8 * torch.randn(r.shape, generator=g) for r in plain.residuals[:K_t]]  # an imperfect map net
    mod = S.cascade_modify(z, grids, pred)
    # the first K_t scales are the (quantised) predictions
    for k in range(K_t):
        assert torch.equal(mod.bits[k], bsq_quantize(pred[k])[1])
    # the first modified target is the residual from the LR cascade to the HR latent, not the plain target
    f_lr = S.sum_codes([bsq_quantize(p)[0] for p in pred], (32, 32))
    torch.testing.assert_close(mod.residuals[K_t], S.resize(z - f_lr, grids[K_t], "area"))
    assert not torch.equal(mod.bits[K_t], plain.bits[K_t])
    # following the modified targets brings the LR-started cascade close to the HR latent ...
    err_lr = (z - f_lr).norm()
    err_mod = (z - mod.f_hat).norm()
    assert err_mod < 0.5 * err_lr
    # ... much closer than appending the plain (unmodified) GT targets to the LR prefix would
    f_naive = f_lr + S.sum_codes(plain.codes[K_t:], (32, 32))
    assert err_mod < 0.8 * (z - f_naive).norm()


def test_alg2_gradient_reaches_predictions_and_shape_errors():
    z = smooth_latent(seed=4)
    grids = S.schedule_for("tiny").vae_grids
    pred = [torch.randn(2, 8, h, w, requires_grad=True) for h, w in grids[:4]]
    mod = S.cascade_modify(z, grids, pred)
    mod.f_hat.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pred)
    with pytest.raises(ValueError, match=r"prefix\[1\]"):
        S.cascade_modify(z, grids, [torch.zeros(2, 8, 2, 2), torch.zeros(2, 8, 3, 3)])

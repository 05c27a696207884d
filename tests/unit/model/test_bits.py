"""BSQ quantisation and bit ↔ code conversions (nsarm.bits)."""

import pytest
import torch
import torch.nn.functional as F

from nsarm.bits import (
    bits_to_codes,
    bits_to_index,
    bsc_flip_prob,
    bsq_mask,
    bsq_quantize,
    codes_to_bits,
    flip_bits,
    index_to_bits,
)


@pytest.mark.parametrize("d", [4, 14, 32])
def test_codes_are_unit_norm_hypercube_vertices(d):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, d, 5, 3, generator=g) * 7.0
    codes, bits = bsq_quantize(z)
    assert codes.shape == z.shape and bits.shape == z.shape and bits.dtype == torch.int64
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(2, 5, 3))
    torch.testing.assert_close(codes.abs(), torch.full_like(codes, d**-0.5))
    assert torch.equal(bits, (z > 0).long())  # sign decided by the latent, independent of its norm
    assert torch.equal(codes > 0, z > 0)


def test_sign_of_zero_is_negative():
    z = torch.tensor([[0.0, 1.0, -1.0, 0.0]]).view(1, 4, 1, 1)
    codes, bits = bsq_quantize(z)
    assert bits.flatten().tolist() == [0, 1, 0, 0]
    assert codes.flatten().tolist() == pytest.approx([-0.5, 0.5, -0.5, -0.5])


def test_bits_codes_round_trip():
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(0, 2, (3, 14, 4, 4), generator=g)
    codes = bits_to_codes(bits)
    assert torch.equal(codes_to_bits(codes), bits)
    torch.testing.assert_close(codes, F.normalize(codes, dim=1))  # already on the unit sphere
    q, b2 = bsq_quantize(codes)  # re-quantising a code is the identity
    assert torch.equal(b2, bits)
    torch.testing.assert_close(q, codes)


def test_index_round_trip_and_official_mask():
    assert bsq_mask(4).tolist() == [8, 4, 2, 1]
    g = torch.Generator().manual_seed(2)
    bits = torch.randint(0, 2, (5, 7, 14), generator=g)
    idx = bits_to_index(bits)
    assert idx.max() < 2**14
    assert torch.equal(index_to_bits(idx, 14), bits)
    assert bits_to_index(torch.tensor([1, 0, 1])).item() == 5  # MSB first


def test_straight_through_gradient_is_that_of_the_normalised_latent():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 8, 3, 3, generator=g, requires_grad=True)
    w = torch.randn(2, 8, 3, 3, generator=g)
    codes, _ = bsq_quantize(z)
    (codes * w).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (F.normalize(z2, dim=1) * w).sum().backward()
    assert z.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, z2.grad)


def test_flip_bits_probability_and_determinism():
    bits = torch.zeros(200, 100, dtype=torch.long)
    assert torch.equal(flip_bits(bits, 0.0), bits)
    assert torch.equal(flip_bits(bits, 1.0), 1 - bits)
    a = flip_bits(bits, 0.3, torch.Generator().manual_seed(4))
    b = flip_bits(bits, 0.3, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert 0.28 < a.float().mean().item() < 0.32
    with pytest.raises(ValueError, match="p must be"):
        flip_bits(bits, 1.5)


def test_bsc_flip_prob_is_uniform_on_hundredths():
    g = torch.Generator().manual_seed(5)
    ps = [bsc_flip_prob(0.3, g) for _ in range(3000)]
    values = {round(p, 2) for p in ps}
    assert values == {round(0.01 * i, 2) for i in range(31)}
    assert abs(sum(ps) / len(ps) - 0.15) < 0.01
    assert bsc_flip_prob(0.0, g) == 0.0

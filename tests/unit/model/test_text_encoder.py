"""Text encoder: tiny T5 + locally built tokenizer, packing, save/load, caption cache keyed by encoder id."""

from __future__ import annotations

import pytest
import torch

from nsarm.text import CaptionCache, build_tiny_text_encoder, encode_cached, load_text_encoder


@pytest.fixture(scope="module")
def encoder():
    return build_tiny_text_encoder(seed=0)


def test_packing_keeps_only_real_tokens_and_is_batch_independent(encoder):
    caps = ["a photo of a cat", "", "a city street at night with cars and bright lights"]
    packed = encoder.encode(caps)
    n_tokens = [len(encoder.tokenizer(c).input_ids) for c in caps]
    assert packed.lens_B.tolist() == n_tokens and n_tokens[1] == 1  # empty caption = just </s>
    assert packed.features_NT.shape == (sum(n_tokens), encoder.width)
    alone = encoder.encode([caps[2]])
    torch.testing.assert_close(packed.features_NT[n_tokens[0] + 1 :], alone.features_NT, atol=1e-5, rtol=1e-5)


def test_truncation_at_max_length():
    enc = build_tiny_text_encoder(seed=0, max_length=8)
    packed = enc.encode(["a photo of a cat " * 20])
    assert packed.lens_B.tolist() == [8]


def test_save_load_round_trip_and_seeded_build(encoder, tmp_path):
    caps = ["harmonious colors and rich details"]
    encoder.save(tmp_path / "t5")
    loaded = load_text_encoder(tmp_path / "t5")
    torch.testing.assert_close(loaded.encode(caps).features_NT, encoder.encode(caps).features_NT)
    again = build_tiny_text_encoder(seed=0)
    assert torch.equal(again.encode(caps).features_NT, encoder.encode(caps).features_NT)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(tmp_path / "missing")


def test_caption_cache_hits_and_is_keyed_by_encoder(encoder, tmp_path):
    cache = CaptionCache(tmp_path, encoder.encoder_id)
    caps = ["a flower", "a lake", "a flower"]
    first = encode_cached(encoder, caps, cache)
    assert cache.path("a flower").is_file() and cache.path("a lake").is_file()
    cache.put("a lake", torch.full((2, encoder.width), 7.0))  # poison the entry: a hit must return it unchanged
    second = encode_cached(encoder, caps, cache)
    assert second.lens_B.tolist() == [first.lens_B[0].item(), 2, first.lens_B[2].item()]
    assert torch.equal(second.features_NT[first.lens_B[0] : first.lens_B[0] + 2], torch.full((2, encoder.width), 7.0))
    other = CaptionCache(tmp_path, "another-encoder")
    assert other.get("a lake") is None

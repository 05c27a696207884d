"""Infinity transformer: official key names/shapes/counts (meta device), KV-cache == teacher forcing, masks, RoPE."""

from __future__ import annotations

import pytest
import torch

from nsarm.attention import attend, block_causal_mask
from nsarm.rope import apply_rope, rope_angles, rope_positions
from nsarm.transformer import TRANSFORMER_PRESETS, InfinityTransformer, PackedText
from tests.support.tiny_models import tiny_transformer

SCHEDULE_06M = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)]


def _meta_model(name):
    with torch.device("meta"):
        return InfinityTransformer(TRANSFORMER_PRESETS[name])


@pytest.mark.parametrize(
    "name, n_keys, n_elems, n_params, C, d",
    [
        ("infinity-2b", 694, 2_204_697_152, 2_204_564_032, 2048, 32),
        ("infinity-8b", 862, 8_376_082_128, 8_375_791_824, 3584, 56),
    ],
)
def test_official_state_dict_layout(name, n_keys, n_elems, n_params, C, d):
    model = _meta_model(name)
    sd = model.state_dict()
    assert len(sd) == n_keys
    assert sum(v.numel() for v in sd.values()) == n_elems
    assert sum(p.numel() for p in model.parameters()) == n_params
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    depth = model.cfg.depth
    per = depth // 8
    expected = {
        "cfg_uncond": (512, 2048),
        "pos_start": (1, 1, C),
        "text_norm.weight": (2048,),
        "text_proj_for_sos.ca.mat_q": (1, 16, C // 16),
        "text_proj_for_sos.ca.zero_k_bias": (C,),
        "text_proj_for_sos.ca.mat_kv.weight": (2 * C, 2048),
        "text_proj_for_ca.0.weight": (C, 2048),
        "text_proj_for_ca.2.weight": (C, C),
        "lvl_embed.weight": (15, C),
        "word_embed.weight": (C, d),
        "shared_ada_lin.1.weight": (6 * C, C),
        "head_nm.ada_lin.1.weight": (2 * C, C),
        "head.weight": (2 * d, C),
        f"block_chunks.7.module.{per - 1}.ada_gss": (1, 1, 6, C),
        f"block_chunks.7.module.{per - 1}.sa.scale_mul_1H11": (1, C // 128, 1, 1),
        f"block_chunks.3.module.{per - 1}.sa.mat_qkv.weight": (3 * C, C),
        "block_chunks.0.module.0.sa.zero_k_bias": (C,),
        "block_chunks.0.module.0.ca.zero_k_bias": (C,),
        "block_chunks.0.module.0.ca.mat_kv.weight": (2 * C, C),
        "block_chunks.0.module.0.ffn.fc1.weight": (4 * C, C),
        "block_chunks.0.module.0.ca_norm.bias": (C,),
    }
    for k, shape in expected.items():
        assert shapes[k] == shape, k
    assert f"block_chunks.0.module.{per}.ada_gss" not in shapes and "block_chunks.8.module.0.ada_gss" not in shapes
    assert not any(k.startswith("blocks.") or "ln_wo_grad" in k for k in shapes)
    buffers = {k for k, _ in model.named_buffers()}
    assert len(buffers) == 1 + 2 * depth and all(k.endswith("zero_k_bias") for k in buffers)


def test_block_causal_mask_sees_only_itself_and_coarser_scales():
    mask = block_causal_mask([1, 4, 9])
    assert mask.shape == (14, 14)
    assert mask[0].tolist() == [True] + [False] * 13
    assert mask[1:5, :5].all() and not mask[1:5, 5:].any()  # scale 1: bidirectional inside, nothing finer
    assert mask[5:].all()


def test_rope_positions_match_spec_table():
    pos = rope_positions(SCHEDULE_06M, (64, 64))
    starts = [0, 1, 5, 21, 57, 121, 265]
    table = {
        1: [0], 2: [0, 32], 4: [0, 16, 32, 48], 6: [0, 11, 21, 32, 43, 53], 8: [0, 8, 16, 24, 32, 40, 48, 56],
        12: [0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59], 16: list(range(0, 64, 4)),
    }
    for (h, w), s in zip(SCHEDULE_06M, starts, strict=True):
        rows = pos[s : s + h * w, 0].view(h, w)
        cols = pos[s : s + h * w, 1].view(h, w)
        assert rows[:, 0].tolist() == table[h] and cols[0].tolist() == table[w]
        assert (rows == rows[:, :1]).all() and (cols == cols[:1]).all()


def test_rope_rotates_interleaved_pairs_by_row_then_column_angles():
    cos, sin = rope_angles(8, torch.tensor([[3, 5]]))  # inv_freq = [1, 0.01] for half=4
    angles = torch.tensor([3.0, 0.03, 5.0, 0.05])
    torch.testing.assert_close(cos[0], angles.cos())
    x = torch.arange(8.0).view(1, 1, 1, 8)
    y = apply_rope(x, cos, sin).view(4, 2)
    pairs = torch.arange(8.0).view(4, 2)
    expect = torch.stack([pairs[:, 0] * angles.cos() - pairs[:, 1] * angles.sin(),
                          pairs[:, 0] * angles.sin() + pairs[:, 1] * angles.cos()], dim=-1)
    torch.testing.assert_close(y, expect)


def test_attention_backends_agree():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 14, 8, generator=g) for _ in range(3))
    mask = block_causal_mask([1, 4, 9])
    torch.testing.assert_close(attend(q, k, v, mask, 1.0, backend="sdpa"), attend(q, k, v, mask, 1.0, backend="math"))
    # "flash" falls back to SDPA where the kernel does not apply (CPU, masks)
    torch.testing.assert_close(attend(q, k, v, None, None, backend="flash"), attend(q, k, v, None, None, backend="math"))


def _text(B, C, g):
    lens = torch.tensor([5, 3, 7][:B])
    return PackedText(torch.randn(int(lens.sum()), C, generator=g), lens)


def test_kv_cache_reproduces_teacher_forced_logits_scale_by_scale():
    model = tiny_transformer()
    g = torch.Generator().manual_seed(1)
    schedule = SCHEDULE_06M[:5]
    lens = [h * w for h, w in schedule]
    B, d = 2, model.cfg.d_vae
    text = _text(B, model.cfg.text_channels, g)
    x = torch.randn(B, sum(lens) - 1, d, generator=g)
    with torch.no_grad():
        full = model(text, x, schedule)
        cond = model.condition(text)
        cache = model.new_cache()
        start = 0
        for si, n in enumerate(lens):
            inp = None if si == 0 else x[:, start - 1 : start - 1 + n]
            step = model.forward_scale(cond, inp, si, schedule, cache)
            torch.testing.assert_close(step, full[:, start : start + n], atol=1e-5, rtol=1e-4)
            start += n


def test_teacher_forcing_is_block_causal_and_text_conditioned():
    model = tiny_transformer()
    g = torch.Generator().manual_seed(2)
    schedule = SCHEDULE_06M[:4]
    B, d = 1, model.cfg.d_vae
    text = _text(B, model.cfg.text_channels, g)
    x = torch.randn(B, 1 + 4 + 16 + 36 - 1, d, generator=g)
    with torch.no_grad():
        base = model(text, x, schedule)
        x2 = x.clone()
        x2[:, 4:20] += 1.0  # change the input of scale 2 (tokens 5..20)
        changed = model(text, x2, schedule)
        assert torch.equal(base[:, :5], changed[:, :5])  # scales 0, 1 cannot see scale 2
        assert not torch.allclose(base[:, 5:], changed[:, 5:])
        uncond = model(text, x, schedule, uncond_B=torch.tensor([True]))
        assert not torch.allclose(uncond, base)


def test_bad_input_shape_is_named():
    model = tiny_transformer()
    g = torch.Generator().manual_seed(3)
    with pytest.raises(ValueError, match="x_BLd_wo_prefix"):
        model(_text(1, model.cfg.text_channels, g), torch.zeros(1, 3, model.cfg.d_vae), SCHEDULE_06M[:3])


@pytest.mark.gpu
def test_flash_backend_matches_sdpa_on_gpu():
    from nsarm.attention import flash_available

    if not flash_available():
        pytest.skip("flash-attn not installed")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 37, 64, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    torch.testing.assert_close(attend(q, k, v, None, 1.0, backend="flash"), attend(q, k, v, None, 1.0, backend="sdpa"),
                               atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_text_encoded_on_cpu_conditions_a_gpu_transformer():
    """A CPU text encoder feeding a CUDA transformer (the training loop and `nsarm upscale` do this): the caption
    features move to the model's device, with and without caption drop (found on an H100: torch.cat of CPU
    features and the CUDA cfg_uncond failed in stage 2)."""
    model = tiny_transformer()
    g = torch.Generator().manual_seed(2)
    text = _text(2, model.cfg.text_channels, g)
    x = torch.randn(2, 4, model.cfg.d_vae, generator=g)
    with torch.no_grad():
        want = model(text, x, SCHEDULE_06M[:2], uncond_B=torch.tensor([True, False]))
        got = model.cuda()(text, x.cuda(), SCHEDULE_06M[:2], uncond_B=torch.tensor([True, False]))
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_built_under_a_cuda_device_context_equals_cpu_built():
    torch.manual_seed(0)
    cpu = InfinityTransformer(TRANSFORMER_PRESETS["tiny"])
    torch.manual_seed(0)
    with torch.device("cuda"):
        gpu = InfinityTransformer(TRANSFORMER_PRESETS["tiny"])
    assert gpu.cfg_uncond.is_cuda
    torch.testing.assert_close(gpu.cfg_uncond.cpu(), cpu.cfg_uncond)


def test_drop_path_is_compile_friendly_and_unbiased():
    """Blocks with different stochastic-depth rates share compiled graphs (one for rate 0, one for the rest), and the
    kept branch is rescaled so its mean is unchanged."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    from nsarm.transformer import DropPath

    dynamo.reset()
    counters.clear()
    paths = [DropPath(0.1 * i / 7).train() for i in range(8)]
    for m in paths:
        m.compile(backend="eager")
    x = torch.ones(4096, 3)
    outs = [m(x) for m in paths]
    assert counters["stats"]["unique_graphs"] <= 2
    assert torch.equal(outs[0], x)  # rate 0: identity
    out = outs[-1]
    kept = (out != 0).all(1)
    assert 0.85 < kept.float().mean() < 0.95  # rate 0.1
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.9))
    assert torch.equal(paths[-1].eval()(x), x)
    dynamo.reset()

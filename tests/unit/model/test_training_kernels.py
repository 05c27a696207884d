"""Training-speed paths of the Infinity transformer, checked on CPU against the plain path: FlexAttention with a block
mask (official `use_flex_attn`), per-block torch.compile in place, and the release's bf16 and fp32 side paths under
autocast."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask

from nsarm import attention
from nsarm.attention import attend, block_causal_mask, flex_block_causal_mask, self_attention_mask
from nsarm.transformer import PackedText
from tests.support.tiny_models import tiny_transformer

SCHEDULE = [(1, 1), (2, 2), (4, 4), (6, 6)]  # 57 tokens: not a multiple of FlexAttention's 128-token tiles


def _inputs(model, g):
    lens = torch.tensor([5, 3])
    text = PackedText(torch.randn(int(lens.sum()), model.cfg.text_channels, generator=g), lens)
    L = sum(h * w for h, w in SCHEDULE)
    x = torch.randn(2, L - 1, model.cfg.d_vae, generator=g).sign() / model.cfg.d_vae**0.5
    return text, x


@pytest.fixture
def flex_backend():
    before = attention.get_backend()
    attention.set_backend("flex")
    yield
    attention.set_backend(before)


def test_flex_kernel_equals_the_dense_block_causal_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 14, 8, generator=g) for _ in range(3))
    want = attend(q, k, v, block_causal_mask([1, 4, 9]), 1.0, backend="math")
    got = attend(q, k, v, flex_block_causal_mask((1, 4, 9), "cpu"), 1.0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_flex_mask_only_under_the_flex_backend_and_sdpa_fallback_for_cpu_gradients(flex_backend):
    assert isinstance(self_attention_mask([1, 4, 9], torch.device("cpu"), needs_grad=False), BlockMask)
    dense = self_attention_mask([1, 4, 9], torch.device("cpu"), needs_grad=True)  # no CPU backward kernel: SDPA
    assert torch.equal(dense, block_causal_mask([1, 4, 9]))
    attention.set_backend("sdpa")
    assert not isinstance(self_attention_mask([1, 4, 9], torch.device("cpu"), needs_grad=False), BlockMask)


def test_flex_teacher_forcing_matches_sdpa_logits_and_keys(flex_backend):
    g = torch.Generator().manual_seed(1)
    model = tiny_transformer()
    text, x = _inputs(model, g)
    with torch.no_grad():
        attention.set_backend("sdpa")
        want = model(text, x, SCHEDULE)
        attention.set_backend("flex")
        got = model(text, x, SCHEDULE)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # fp32 noise
    # with gradients on CPU the flex backend falls back to SDPA: the backward runs, same logits
    logits = model(text, x, SCHEDULE)
    logits.sum().backward()
    assert model.block_chunks[0].module[0].sa.mat_qkv.weight.grad.abs().sum() > 0
    torch.testing.assert_close(logits.detach(), want, atol=1e-5, rtol=1e-5)
    assert list(tiny_transformer().state_dict()) == list(model.state_dict())  # flex adds no module, buffer or key


def test_compiled_blocks_keep_keys_and_logits():
    """Per-block compile in place: same state-dict keys as the release layout, same logits and gradients (CPU)."""
    g = torch.Generator().manual_seed(2)
    eager, compiled = tiny_transformer(), tiny_transformer()
    keys = list(eager.state_dict())
    compiled.compile_blocks(dynamic=False)
    assert list(compiled.state_dict()) == keys
    assert all("_orig_mod" not in k for k in compiled.state_dict())
    text, x = _inputs(eager, g)
    for m in (eager, compiled):
        m(text, x, SCHEDULE).square().mean().backward()
    torch.testing.assert_close(compiled(text, x, SCHEDULE), eager(text, x, SCHEDULE), atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    compiled.load_state_dict(eager.state_dict())  # official checkpoints load into a compiled model unchanged


def test_self_attention_gate_is_bf16_under_autocast_as_released():
    """Under bf16 autocast the gated self-attention branch stays bf16 (`x_sa.mul_(gamma1)` in the release) while the
    residual stream stays fp32; the logits stay within bf16 tolerance of the fp32 forward."""
    g = torch.Generator().manual_seed(3)
    model = tiny_transformer()
    text, x = _inputs(model, g)
    seen = []
    hooks = [blk.drop_path.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
             for blk in model.blocks()]
    with torch.no_grad():
        want = model(text, x, SCHEDULE)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(text, x, SCHEDULE)
    for h in hooks:
        h.remove()
    assert got.dtype == torch.float32
    # two drop paths per block: the self-attention branch (bf16, as released) and the FFN branch (fp32 gate)
    assert seen[0::2] == [(torch.bfloat16, torch.bfloat16)] * model.cfg.depth
    assert seen[1::2] == [(torch.float32, torch.float32)] * model.cfg.depth
    torch.testing.assert_close(got, want, atol=5e-2, rtol=5e-2)


def test_text_side_and_input_embedding_stay_fp32_under_autocast_as_released():
    """The release's trainer runs text projections, the shared AdaLN and the word embedding with autocast off, and
    its sampler the shared AdaLN: under bf16 autocast these equal the fp32 computation bit for bit."""
    g = torch.Generator().manual_seed(5)
    model = tiny_transformer()
    text, x = _inputs(model, g)
    seen = {}

    def keep(name):
        def hook(module, inputs, out):
            seen.setdefault(name, out)  # the first call's output; returns None, so the output is not replaced
        return hook

    hooks = [getattr(model, name).register_forward_hook(keep(name))
             for name in ("word_embed", "text_proj_for_ca", "shared_ada_lin")]
    with torch.no_grad():
        model(text, x, SCHEDULE)
        fp32 = dict(seen)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.condition(text)  # the sampler's call
            assert seen["text_proj_for_ca"].dtype == torch.bfloat16  # as the release's sampler
            seen.clear()
            model(text, x, SCHEDULE)
        gss = model.shared_ada_lin(got.cond_BC).view_as(got.gss_B16C)  # fp32 from the sampler's pooled text
    for h in hooks:
        h.remove()
    assert torch.equal(got.gss_B16C, gss)
    for name, out in fp32.items():
        assert seen[name].dtype == torch.float32 and torch.equal(seen[name], out), name


@pytest.mark.gpu
def test_flex_training_step_matches_sdpa_on_gpu(flex_backend):
    """On CUDA the flex backend also trains (compiled FlexAttention forward and backward): logits and gradients of a
    bf16-autocast step equal the SDPA path's within bf16 tolerance."""
    runs = {}
    for backend in ("sdpa", "flex"):
        attention.set_backend(backend)
        model = tiny_transformer().cuda()
        text, x = _inputs(model, torch.Generator().manual_seed(4))
        text = PackedText(text.features_NT.cuda(), text.lens_B)
        mask = self_attention_mask([h * w for h, w in SCHEDULE], torch.device("cuda"), needs_grad=True)
        assert isinstance(mask, BlockMask) == (backend == "flex")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(text, x.cuda(), SCHEDULE)
        logits.float().square().mean().backward()
        runs[backend] = logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(runs["flex"][0], runs["sdpa"][0], atol=3e-2, rtol=3e-2)
    for name, grad in runs["sdpa"][1].items():
        torch.testing.assert_close(runs["flex"][1][name], grad, atol=3e-2, rtol=5e-2, msg=name)

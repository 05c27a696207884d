"""Stage-1/2 losses, loss weights, caption drop, schedules and configs (pure tensors, tiny shapes)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from nsarm.model import build_model
from nsarm.scales import decompose, get_schedule, scale_loss_weights
from nsarm.text import build_tiny_text_encoder
from nsarm.train.config import TRAIN_PRESETS, TrainConfig, scaling_for, train_config, train_preset
from nsarm.train.loop import lr_lambda
from nsarm.train.steps import (
    Stage2Options,
    drop_captions,
    stage1_loss,
    stage1_targets,
    stage2_loss,
    token_weights,
)

SCHED = get_schedule("0.06M", 1.0, 2)  # tiny: grids 1..16, VAE grids 2..32
K_T = 4


class Fixed(torch.nn.Module):
    """A 'transformation net' that returns given residuals (times a learnable scale initialised to 1)."""

    def __init__(self, outs):
        super().__init__()
        self.outs = outs
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, z_lr):
        return [o * self.gain for o in self.outs]


@pytest.fixture(scope="module")
def latents():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 8, 32, 32, generator=g)


def test_stage1_targets_are_unquantised_alg1_residuals(latents):
    _, z_hr = latents
    targets = stage1_targets(z_hr, SCHED.vae_grids, K_T)
    ref = decompose(z_hr, SCHED.vae_grids)
    assert len(targets) == K_T
    for t, r, (h, w) in zip(targets, ref.residuals, SCHED.vae_grids, strict=False):
        assert t.shape == (2, 8, h, w)
        assert torch.equal(t, r)
    # un-quantised: not all entries are ±1/√d
    assert not torch.allclose(targets[2].abs(), torch.full_like(targets[2], 8 ** -0.5))


def test_stage1_loss_zero_for_exact_prediction_and_grad_otherwise(latents):
    z_lr, z_hr = latents
    targets = stage1_targets(z_hr, SCHED.vae_grids, K_T)
    exact = stage1_loss(Fixed(targets), z_lr, z_hr, SCHED.vae_grids, K_T)
    assert exact.loss.item() == 0.0
    net = Fixed([t * 0.5 for t in targets])
    out = stage1_loss(net, z_lr, z_hr, SCHED.vae_grids, K_T)
    expect = torch.cat([(0.5 * t).flatten() - t.flatten() for t in targets]).pow(2).mean()
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-5)
    out.loss.backward()
    assert net.gain.grad is not None and net.gain.grad.item() < 0  # increasing the gain reduces the loss


def test_token_weights_scale_reweighting_and_mask():
    grids = list(SCHED.grids)
    w = token_weights(grids, K_T, True)
    assert w.sum().item() == pytest.approx(1.0)
    start = sum(h * ww for h, ww in grids[:K_T])
    assert torch.all(w[:start] == 0) and torch.all(w[start:] > 0)
    # ratio between a token of scale 4 (8x8) and of the last scale (16x16) = sqrt(256/64) = 2, as Infinity
    ref = scale_loss_weights(grids)
    assert w[start].item() / w[-1].item() == pytest.approx(ref[start].item() / ref[-1].item())
    assert w[start].item() / w[-1].item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no scale"):
        token_weights(grids, len(grids), True)


def test_caption_drop_rate():
    g = torch.Generator().manual_seed(1)
    rate = drop_captions(20000, 0.1, g).float().mean().item()
    assert abs(rate - 0.1) < 0.01
    assert not drop_captions(100, 0.0, g).any()


@pytest.fixture(scope="module")
def tiny_parts():
    torch.manual_seed(0)
    m = build_model("tiny", with_tokenizer=False)
    return m, build_tiny_text_encoder(d_model=64)


def test_stage2_loss_ignores_first_kt_scales_and_reaches_map_net(latents, tiny_parts):
    z_lr, z_hr = latents
    model, enc = tiny_parts
    text = enc.encode(["a photo", "a cat on a table"])
    opts = Stage2Options(k_t=K_T, caption_drop=0.0)
    model.eval()  # no dropout / drop-path: two calls must see the same network
    out = stage2_loss(model.transformer, model.map_transformer, z_lr, z_hr, text, list(SCHED.grids), 2, opts,
                      torch.Generator().manual_seed(0))
    L = SCHED.num_tokens
    assert out.loss.item() == pytest.approx(math.log(2), rel=0.3)  # a fresh head is near chance on bits
    model.zero_grad()
    out.loss.backward()
    grads = [p.grad for p in model.map_transformer.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum().item() for g in grads) > 0  # straight-through codes carry the gradient
    assert model.transformer.head.weight.grad.abs().sum() > 0
    # the loss does not depend on the logits of the first K_t scales: perturb them through a hooked head
    start = sum(h * w for h, w in list(SCHED.grids)[:K_T])

    def perturb(_, __, logits):
        noise = torch.zeros_like(logits)
        noise[:, :start] = 50.0
        return logits + noise

    h = model.transformer.head.register_forward_hook(perturb)
    try:
        out2 = stage2_loss(model.transformer, model.map_transformer, z_lr, z_hr, text, list(SCHED.grids), 2, opts,
                           torch.Generator().manual_seed(0))
    finally:
        h.remove()
        model.train()
    assert out2.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert L == 521


def test_stage2_loss_uses_cascade_targets_not_plain_gt(latents, tiny_parts):
    """With the map net replaced by the exact Alg.-1 residuals the targets equal plain decomposition bits; with a
    different prediction the labels of later scales change (Alg. 2), so the loss changes."""
    z_lr, z_hr = latents
    model, enc = tiny_parts
    text = enc.encode(["a", "b"])
    opts = Stage2Options(k_t=K_T, caption_drop=0.0)
    exact = stage1_targets(z_hr, SCHED.vae_grids, K_T)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    model.eval()  # no drop-path randomness between the two calls
    a = stage2_loss(model.transformer, Fixed(exact), z_lr, z_hr, text, list(SCHED.grids), 2, opts, g())
    b = stage2_loss(model.transformer, Fixed([-e for e in exact]), z_lr, z_hr, text, list(SCHED.grids), 2, opts, g())
    model.train()
    assert a.loss.item() != pytest.approx(b.loss.item(), rel=1e-4)


def test_lr_schedule_warmup_then_decay():
    cfg = TrainConfig(steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_lambda(TrainConfig(warmup_steps=2, schedule="constant"))(50) == 1.0


def test_config_presets_and_errors():
    s1, s2 = train_config("nsarm-8b-16gpu", 1), train_config("nsarm-8b-16gpu", 2)
    w1, w2 = scaling_for("nsarm-8b-16gpu", 1), scaling_for("nsarm-8b-16gpu", 2)
    assert (s1.batch_size, s1.lr, s1.steps) == (196, 2e-5, 100_000)
    assert (s2.batch_size, s2.lr, s2.steps, s2.strategy) == (32, 4e-5, 40_000, "fsdp")
    assert s1.micro_batch(w1.num_workers) * w1.num_workers * s1.grad_accum == 196
    assert s2.micro_batch(w2.num_workers) * w2.num_workers * s2.grad_accum == 32
    assert w2.num_workers == 16 and w2.use_gpu
    assert s1.betas == (0.9, 0.97)
    with pytest.raises(ValueError, match="not divisible"):
        s1.micro_batch(16)
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        train_config("tiny", 1, stepz=3)
    with pytest.raises(ValueError, match="unknown training preset 'huge'"):
        train_config("huge", 1)
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        train_config("tiny", 3)
    with pytest.raises(ValueError, match="TrainConfig.attention must be one of"):
        train_config("tiny", 2, attention="flash")
    cfg = train_config("tiny", 2, steps=7)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    older = {k: v for k, v in cfg.to_dict().items() if k not in ("attention", "compile")}  # saved before #19
    assert TrainConfig.from_dict(older) == cfg
    assert train_config("tiny", 1, betas=[0.8, 0.9]).betas == (0.8, 0.9)  # JSON lists (flow parameters) → tuple
    assert train_config("tiny", 1, tokenizer_path=None) == train_config("tiny", 1)  # None = not given, as elsewhere


def test_a_training_preset_is_one_record():
    """Both stages' configs, their scaling and the tokenizer warm-up live in one `TrainPreset` per name (issue
    18.5), so a preset cannot have configs without scaling; the warm-up is a field, not a name check in the flow."""
    for name, rec in TRAIN_PRESETS.items():
        assert train_preset(name) is rec
        assert [train_config(name, s) for s in (1, 2)] == [rec.stage1, rec.stage2]
        assert [scaling_for(name, s) for s in (1, 2)] == [rec.scaling1, rec.scaling2]
    assert train_preset("tiny").tokenizer_warm_up  # fresh tiny model: its random tokenizer caps the quality
    assert not train_preset("nsarm-8b-16gpu").tokenizer_warm_up  # the released VAE is loaded
    with pytest.raises(ValueError, match="stage1/stage2 configs say stage 2/2"):
        dataclasses.replace(TRAIN_PRESETS["tiny"], stage1=train_config("tiny", 2))


def test_batch_stream_holdout_and_position(train_root):
    """Held-out keys are never yielded; a stream restored from a position yields exactly what the original
    yields next; the epoch tail shorter than a batch is dropped."""
    from nsarm.train.data import BatchStream, holdout_keys, pick_versions

    root = train_root["root"]
    held = holdout_keys(root, 2)
    assert len(held) == 2 and held <= set(train_root["keys"][6:])
    versions = pick_versions(root)

    def stream():
        return BatchStream(root, versions, 0, 1, 3, 256, 64, block_size=64, exclude=held)

    a = stream()
    first = [next(a).keys for _ in range(2)]  # 8 trainable samples per epoch: batches of 3 → 2 per epoch
    assert not (set(sum(first, [])) & held) and len(set(sum(first, []))) == 6
    pos = a.state_dict()
    nxt = [next(a).keys for _ in range(3)]
    b = stream()
    b.load_state_dict(pos)
    assert [next(b).keys for _ in range(3)] == nxt
    assert a.epoch == 2 and not (set(sum(nxt, [])) & held)
    with pytest.raises(ValueError, match="held out|cannot hold out"):
        holdout_keys(root, 4)

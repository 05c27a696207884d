"""FSDP path with a one-rank process group (gloo on CPU; NCCL on one CUDA device, marked `gpu`): sharding with bf16
blocks under the loop's autocast, a training step, sharded save/load, consolidation. Two ranks, the fp32 match with
DDP and resume under Ray: tests/integration/train/test_fsdp_ray.py."""

from __future__ import annotations

import pytest
import torch

DEVICES = [pytest.param(("cpu", "gloo"), id="cpu-gloo"),
           pytest.param(("cuda", "nccl"), id="cuda-nccl", marks=pytest.mark.gpu)]


@pytest.fixture
def one_rank_group(request, tmp_path):
    import torch.distributed as dist

    device, backend = request.param
    dist.init_process_group(backend, init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield device
    dist.destroy_process_group()


@pytest.mark.parametrize("one_rank_group", DEVICES, indirect=True)
def test_fsdp_step_save_load_and_consolidate(one_rank_group, tmp_path):
    from nsarm.model import build_model
    from nsarm.scales import get_schedule
    from nsarm.train.config import train_config
    from nsarm.train.fsdp import consolidated_model, load_sharded, save_sharded, shard_stage_module
    from nsarm.train.steps import Stage2Options, StageModule
    from nsarm.transformer import PackedText

    device = torch.device(one_rank_group)
    cfg = train_config("tiny", 2, strategy="fsdp", bf16=True, activation_checkpointing=True)
    torch.manual_seed(0)
    model = build_model("tiny").to(device)
    module = shard_stage_module(StageModule(model, 2), cfg)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    sched = get_schedule("0.06M", 1.0, 2)
    text = PackedText(torch.randn(5, 64, device=device), torch.tensor([3, 2]))  # 2 captions of T5 features
    z_lr, z_hr = torch.randn(2, 8, 8, 8, device=device), torch.randn(2, 8, 32, 32, device=device)
    initial = {k: v.clone() for k, v in consolidated_model(model, module, 2, 0).state_dict().items()}
    with torch.autocast(device.type, dtype=torch.bfloat16):  # what loop.py wraps an FSDP bf16 forward in
        loss, _ = module(z_lr, z_hr, text, list(sched.grids), 2, Stage2Options(k_t=4), torch.Generator())
    loss.backward()
    opt.step()
    save_sharded(module, opt, tmp_path / "model")
    before = consolidated_model(model, module, 2, 0).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in before.items() if k.startswith("transformer."))
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    load_sharded(module, opt, tmp_path / "model")
    after = consolidated_model(model, module, 2, 0).state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


@pytest.mark.slow  # inductor compiles the tiny block twice (forward, backward): ~2 CPU minutes
@pytest.mark.parametrize("one_rank_group", DEVICES, indirect=True)
def test_blocks_compiled_inside_fsdp_units_keep_keys_loss_and_gradients(one_rank_group):
    """TrainConfig.compile: every block compiled in place, then sharded (bf16 units, activation checkpointing) — the
    sharded and the exported state dicts keep the release's keys, and the step equals the uncompiled one."""
    from nsarm.model import build_model
    from nsarm.scales import get_schedule
    from nsarm.train.config import train_config
    from nsarm.train.fsdp import consolidated_model, shard_stage_module
    from nsarm.train.steps import Stage2Options, StageModule
    from nsarm.transformer import PackedText

    device = torch.device(one_rank_group)
    cfg = train_config("tiny", 2, strategy="fsdp", bf16=True, activation_checkpointing=True, compile=True)
    sched = get_schedule("0.06M", 1.0, 2)
    g = torch.Generator().manual_seed(0)
    text = PackedText(torch.randn(5, 64, generator=g).to(device), torch.tensor([3, 2]))
    z_lr, z_hr = torch.randn(2, 8, 8, 8, generator=g).to(device), torch.randn(2, 8, 32, 32, generator=g).to(device)
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model("tiny").to(device)
        if compiled:
            model.transformer.compile_blocks()
        module = shard_stage_module(StageModule(model, 2), cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = module(z_lr, z_hr, text, list(sched.grids), 2, Stage2Options(k_t=4, caption_drop=0.0),
                             torch.Generator())
        loss.backward()
        grads = {n: p.grad.full_tensor().float() for n, p in module.named_parameters() if p.grad is not None}
        runs[compiled] = (loss.detach(), list(module.state_dict()), grads,
                          list(consolidated_model(model, module, 2, 0).state_dict()))
    (loss0, keys0, grads0, export0), (loss1, keys1, grads1, export1) = runs[False], runs[True]
    assert keys1 == keys0 and export1 == export0
    assert all("_orig_mod" not in k and "_checkpoint_wrapped" not in k for k in export1)
    torch.testing.assert_close(loss1, loss0, atol=1e-3, rtol=1e-3)
    assert grads1.keys() == grads0.keys()
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, atol=2e-2, rtol=5e-2, msg=name)

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
    from nsarm.train.loop import StageModule
    from nsarm.train.steps import Stage2Options
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

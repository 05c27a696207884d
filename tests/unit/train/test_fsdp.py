"""FSDP path on one CUDA device (one-rank NCCL group): sharding, a training step, sharded save/load, consolidation."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture
def nccl_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp_step_save_load_and_consolidate(nccl_group, tmp_path):
    from nsarm.model import build_model
    from nsarm.scales import get_schedule
    from nsarm.text import build_tiny_text_encoder
    from nsarm.train.config import train_config
    from nsarm.train.fsdp import consolidated_model, load_sharded, save_sharded, shard_stage_module
    from nsarm.train.loop import StageModule
    from nsarm.train.steps import Stage2Options

    cfg = train_config("tiny", 2, strategy="fsdp", bf16=True, activation_checkpointing=True)
    torch.manual_seed(0)
    model = build_model("tiny").cuda()
    module = shard_stage_module(StageModule(model, 2), cfg)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    sched = get_schedule("0.06M", 1.0, 2)
    text = build_tiny_text_encoder(64).encode(["a", "b"])
    text = type(text)(text.features_NT.cuda(), text.lens_B)
    z_lr, z_hr = torch.randn(2, 8, 8, 8, device="cuda"), torch.randn(2, 8, 32, 32, device="cuda")
    loss, _ = module(z_lr, z_hr, text, list(sched.grids), 2, Stage2Options(k_t=4), torch.Generator())
    loss.backward()
    opt.step()
    save_sharded(module, opt, tmp_path / "model")
    before = consolidated_model(model, module, 2, 0).state_dict()
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    load_sharded(module, opt, tmp_path / "model")
    after = consolidated_model(model, module, 2, 0).state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k

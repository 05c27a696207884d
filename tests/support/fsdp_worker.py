"""One rank of a 2-process gloo group for the FSDP tests (launched by test_fsdp_ray.py, one process per rank).

    python fsdp_worker.py RANK INIT_FILE CKPT_DIR OUT     # both checks below, one process start per rank

Load: the module is built with another seed than the trained one (its weights differ before loading), sharded
exactly like the loop does, then `load_sharded` restores model + optimiser; rank 0 saves the full (gathered)
model state dict and the full optimiser state to OUT for the test to compare.
bf16: FSDP with bf16 blocks, activation checkpointing and the loop's autocast, 3 AdamW steps on one fixed batch (random latents and text features);
each rank writes its losses and the dtypes its blocks ran with to OUT.bf16.rank{r}.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from nsarm.compat import ensure_torchvision_importable

ensure_torchvision_importable()  # a torchrun entry point


def _sharded(bf16: bool, seed: int):
    from nsarm.model import build_model
    from nsarm.train.config import train_config
    from nsarm.train.fsdp import shard_stage_module
    from nsarm.train.steps import StageModule

    cfg = train_config("tiny", 2, strategy="fsdp", bf16=bf16, activation_checkpointing=True)
    torch.manual_seed(seed)
    model = build_model("tiny")
    module = shard_stage_module(StageModule(model, 2), cfg)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3, betas=cfg.betas)
    return model, module, opt


def load(ckpt_dir: str, out: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from nsarm.train.fsdp import full_state_dict, load_sharded

    _, module, opt = _sharded(False, seed=12345)
    fresh = full_state_dict(module)
    load_sharded(module, opt, ckpt_dir)
    full = full_state_dict(module)
    optim = get_optimizer_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        torch.save({"fresh": fresh, "model": full, "optimizer": optim}, out)


def bf16_steps(out: str) -> None:
    from nsarm.scales import get_schedule
    from nsarm.train.steps import Stage2Options
    from nsarm.transformer import PackedText

    _, module, opt = _sharded(True, seed=0)
    sched = get_schedule("0.06M", 1.0, 2)
    torch.manual_seed(7)  # one fixed batch (the same on both ranks): the loss must fall when it is fitted
    z_lr, z_hr = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 32, 32)
    text = PackedText(torch.randn(7, 64), torch.tensor([4, 3]))  # two captions' T5 features
    opts = Stage2Options(k_t=4, caption_drop=0.0)
    from nsarm.transformer import CrossAttnBlock

    seen: set[str] = set()  # dtypes of a block's parameters while it runs (FSDP swaps in the gathered ones)
    block = next(m for m in module.modules() if isinstance(m, CrossAttnBlock))
    block.register_forward_pre_hook(lambda m, args: seen.add(str(m.ffn.fc1.weight.dtype)))
    losses = []
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what loop.py does for FSDP with cfg.bf16
            loss, _ = module(z_lr, z_hr, text, list(sched.grids), 2, opts, torch.Generator().manual_seed(0))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    with open(f"{out}.rank{dist.get_rank()}", "w") as f:
        json.dump({"losses": losses, "block_param_dtypes": sorted(seen),
                   "master_dtype": str(block.ffn.fc1.weight.dtype)}, f)


if __name__ == "__main__":
    rank, init_file, ckpt_dir, out_file = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        load(ckpt_dir, out_file)
        bf16_steps(out_file + ".bf16")
    finally:
        dist.destroy_process_group()

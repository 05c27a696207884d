"""FSDP path of the training loop (the 2B/8B presets' stage 2): sharding, bf16 mixed precision, activation
checkpointing, and sharded checkpoints with torch.distributed.checkpoint (DCP).

    module = shard_stage_module(StageModule(model, 2), cfg)      # FSDP2 `fully_shard`: one unit per block
    save_sharded(module, optimizer, ckpt_dir / "model")          # every rank writes its own shard files
    load_sharded(module, optimizer, ckpt_dir / "model")

Units: every transformer `CrossAttnBlock` and every per-scale encoder of the transformation net is its own FSDP
unit (its parameters are gathered just for its forward/backward), the rest (embeddings, head, text projection,
conv feature extractors) belongs to the root unit. Mixed precision (cfg.bf16): the blocks' parameters are gathered
in bf16 and the forward runs under bf16 autocast (loop.py), gradients are reduced in fp32; the root unit and the
affine LayerNorms inside blocks (then units of their own) stay fp32, as the model keeps its residual stream and
logits in fp32; the optimiser holds fp32 master weights (FSDP2 keeps the sharded parameters in fp32).
Activation checkpointing recomputes each block in the backward pass (10521 tokens per 1024² sample at 8B).
With TrainConfig.compile the blocks' forwards are compiled in place before sharding (loop.py): each unit's FSDP hooks
wrap a compiled forward, and no `_orig_mod.` wrapper enters the state-dict keys.

Collective rules the loop keeps: every rank runs the same forwards (so no rank-0-only LR|SR|HR preview grids
under FSDP), and every trained parameter gets a gradient on every rank (FSDP reduce-scatters only parameters
with one; StageModule adds a zero term for the caption-drop embedding). Gradient accumulation reduce-scatters
every micro step (FSDP2 has no cheap `no_sync`: skipping it would keep unsharded gradients).

The same code runs on CPU over gloo, bf16 included: tests/integration/train/test_fsdp_ray.py trains the tiny
preset with 2 Ray Train workers (fp32 losses equal DDP's bit for bit); tests/unit/train/test_fsdp.py runs one rank
on CPU and, marked `gpu`, on one CUDA device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn


def _units(module: nn.Module) -> list[nn.Module]:
    """The FSDP units: each transformer block (its activation-checkpoint wrapper when it has one: sharding the
    wrapper keeps FSDP's gather/cast hooks outside the recomputed region, as the recompute skips them) and each
    per-scale encoder of the transformation net."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from nsarm.transformer import CrossAttnBlock

    wrapped = {id(m._checkpoint_wrapped_module): m for m in module.modules() if isinstance(m, CheckpointWrapper)}
    units = [wrapped.get(id(m), m) for m in module.modules() if isinstance(m, CrossAttnBlock)]
    mt = getattr(module, "map_transformer", None)
    if mt is not None:
        units += list(mt.transformers)  # the per-scale nn.TransformerEncoders (the map net's bulk: 364M of 385M)
    return units


def shard_stage_module(module: nn.Module, cfg) -> nn.Module:
    """Apply activation checkpointing (optional) and FSDP2 to the StageModule in place; returns it."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not torch.distributed.is_initialized():
        raise RuntimeError("FSDP needs an initialised process group (run under Ray Train / torchrun)")
    if cfg.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        from nsarm.transformer import CrossAttnBlock

        apply_activation_checkpointing(module, check_fn=lambda m: isinstance(m, CrossAttnBlock))
    # Transformer blocks: inputs are not cast, so the residual stream, AdaLN terms and RoPE tables stay fp32 (the
    # block casts what it needs and autocast runs its matmuls in bf16), as in the DDP path. The map net's
    # nn.TransformerEncoders get bf16 inputs (their fused attention wants one dtype).
    param_dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    blocks = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    encoders = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    units = _units(module)
    if cfg.bf16:
        # Affine LayerNorms inside bf16 blocks normalise the fp32 residual stream: their own fp32 units (a few KB
        # each), because CPU layer_norm rejects bf16 weights on an fp32 input ("mixed dtype (CPU): expect parameter
        # to have scalar type of Float"); CUDA autocast would upcast them anyway.
        for unit in units:
            for m in unit.modules():
                if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                    fully_shard(m, mp_policy=fp32)
    for unit in units:
        fully_shard(unit, mp_policy=encoders if isinstance(unit, nn.TransformerEncoder) else blocks)
    # The root unit (embeddings, text projection, head) stays fp32: the head runs with autocast off (fp32 logits).
    fully_shard(module, mp_policy=fp32)
    return module


@contextmanager
def root_gathered(module: nn.Module) -> Iterator[None]:
    """Collective: the root unit's own parameters (conv extractors, embeddings, head) gathered for code that calls
    submodules directly instead of the root's forward (sampling a preview); the block units gather themselves."""
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def save_sharded(module: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Collective: model + optimiser state as DCP shards under `directory` (each rank writes its part)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(directory))


def load_sharded(module: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Collective: restore what `save_sharded` wrote (any rank count with the same sharding plan)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the unsharded model state on rank 0 (CPU), for the consolidated export."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def consolidated_model(model, sharded: nn.Module, stage: int, rank: int):
    """Collective: an unsharded CPU NSARMModel on rank 0 (None elsewhere) with the trained weights, for export."""
    from nsarm.model import NSARMModel

    full = full_state_dict(sharded)  # keys of StageModule: map_transformer.*, transformer.* (stage 2)
    if rank != 0:
        return None
    with torch.device("meta"):
        out = NSARMModel(model.cfg, with_tokenizer=False)
    out.tokenizer = model.tokenizer.cpu()
    parts = {"map_transformer": out.map_transformer, "transformer": out.transformer}
    for name, module in parts.items():
        sub = {k[len(name) + 1:]: v for k, v in full.items() if k.startswith(name + ".")}
        if sub:
            module.load_state_dict(sub, assign=True)
        else:  # stage 1 trains the map net only: the transformer is the (unsharded) initial one
            setattr(out, name, getattr(model, name).cpu())
    return out.eval()

"""The per-worker training loop of one NSARM stage: build → (resume) → step → checkpoint → export. No Ray here.

    summary = train_stage(cfg, root, LocalContext(run_dir))          # one process (tests, debugging)
    info = export_training_checkpoint("runs/tiny-s2/checkpoint_000003", "out/stage2")   # offline, from Ray's dir
    # nsarm/train/ray_trainer.py runs the same function in every Ray Train worker with a RayContext

The loop is written against a small `Context` (rank, world size, where the last checkpoint is, how to report a
new one), so the same code runs alone, under Ray Train (DDP over gloo/NCCL), or under FSDP for the 2B/8B presets.

Per optimiser step: `grad_accum` micro batches (DDP gradient sync only on the last), gradient clipping, AdamW
(β 0.9/0.97), a warm-up + schedule LambdaLR. Every `checkpoint_every` steps (and at the last step) the full training
state goes into a checkpoint directory (see state.py); rank 0 logs metrics (and LR|SR|HR grids every `image_every`
steps) through `Tracker`, and at the end exports the consolidated model (export.py).

Resume: `Context.latest_checkpoint()` → every rank loads the model/optimiser/scheduler, the step counter, the data
position (epoch, consumed samples — the same for every rank, they step in lockstep) and its own RNG states, so a
resumed run continues exactly where the checkpoint was taken: no sample repeated, none skipped.

Test hook: `hooks={"fail_at_step": N, "fail_rank": r, "marker": path}` makes rank r exit hard right after step N
(once: the marker file records that it fired), to exercise Ray's FailureConfig restart.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn

from nsarm.attention import set_backend
from nsarm.model import NSARMModel, model_config
from nsarm.scales import get_schedule
from nsarm.train import state as st
from nsarm.train.config import TrainConfig
from nsarm.train.data import BatchStream, holdout_keys, pick_versions
from nsarm.train.latents import LatentCache
from nsarm.train.steps import Stage2Options, StageModule


class Context(Protocol):
    rank: int
    world_size: int

    def latest_checkpoint(self) -> Path | None: ...

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None: ...


class LocalContext:
    """Single-process context: checkpoints are `run_dir/checkpoints/step_{n:08d}/`, the last `keep` are kept."""

    rank, world_size = 0, 1

    def __init__(self, run_dir: str | Path, keep: int = 3):
        self.ckpt_root = Path(run_dir) / "checkpoints"
        self.keep = keep
        self.reports: list[dict] = []

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.ckpt_root.glob("step_*") if (p / st.STATE_FILE).is_file())
        return done[-1] if done else None

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return
        dst = self.ckpt_root / f"step_{int(metrics['step']):08d}"
        if dst.exists():
            shutil.rmtree(dst)
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(checkpoint_dir, dst)
        for old in sorted(self.ckpt_root.glob("step_*"))[: -self.keep]:
            shutil.rmtree(old)


class Tracker:
    """Rank-0 MLflow logging through nsarm.tracking; a no-op when there is no run (other ranks, unit tests)."""

    def __init__(self, run_id: str | None = None, tracking_uri: str | None = None, experiment: str = "nsarm-train"):
        self.run_id, self.tracking_uri, self.experiment = run_id, tracking_uri, experiment
        self._cm = None

    def __enter__(self) -> Tracker:
        if self.run_id:
            from nsarm import tracking

            self._cm = tracking.start_run(self.experiment, run_id=self.run_id, tracking_uri=self.tracking_uri)
            self._cm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)

    def metrics(self, metrics: dict, step: int) -> None:
        if self._cm is not None:
            from nsarm import tracking

            tracking.log_metrics(metrics, step=step)

    def image(self, img_HW3, name: str) -> None:
        if self._cm is not None:
            from nsarm import tracking

            tracking.log_image(img_HW3, name)


@dataclass
class LoopOptions:
    """Run-time wiring that is not part of the (saved) TrainConfig."""

    export_dir: str | None = None  # where rank 0 writes the consolidated model at the end (local path or s3://)
    caption_cache: str | None = None  # local dir of cached caption features (None = encode every time)
    latent_cache: str | None = None  # local dir of cached frozen-tokenizer latents (None = encode every step)
    hooks: dict[str, Any] = field(default_factory=dict)  # test hooks (fail_at_step, fail_rank, marker)
    device: str | None = None  # default: cuda:{local_rank} when available, else cpu


# ------------------------------------------------------------------------------------------------ building blocks
def build_models(cfg: TrainConfig, device: torch.device):
    """NSARMModel (+ text encoder for stage 2 and previews) with the stage's initial weights (nsarm.loading's rules;
    Infinity weights start stage 1 with a fresh transformation network); the tokenizer is frozen."""
    from nsarm import loading

    mcfg = model_config(cfg.model)
    if mcfg.transform_net is None:
        raise ValueError(f"model preset {cfg.model!r} has no transformation network; NSARM training needs one")
    torch.manual_seed(cfg.seed)  # identical fresh init on every rank (DDP also broadcasts rank 0's weights)
    model = loading.load_model(cfg.model, cfg.init_from, cfg.tokenizer_path, infinity_ok=True)
    model.tokenizer.requires_grad_(False).eval()
    if cfg.stage == 1:
        model.transformer.requires_grad_(False)  # stage 1 trains the transformation network alone
    # frozen, on the CPU (its features are cached per caption); the tiny T5 is built once per process
    text_encoder = loading.load_text_encoder(model.cfg, cfg.text_encoder_path) \
        if cfg.stage == 2 or cfg.image_every else None
    return model.to(device), text_encoder


def lr_lambda(cfg: TrainConfig):
    """Multiplier of the peak lr at step s: linear warm-up, then constant / cosine / linear decay to min_lr_ratio."""

    def f(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        t = min(1.0, (s - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else 1 - t
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return f


def wrap(module: StageModule, cfg: TrainConfig, world_size: int, device: torch.device) -> nn.Module:
    """DDP (small presets) or FSDP with one unit per transformer block (2B/8B); unchanged when alone."""
    if cfg.strategy == "fsdp":
        from nsarm.train.fsdp import shard_stage_module

        return shard_stage_module(module, cfg)
    if world_size == 1 or not dist.is_initialized():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # find_unused_parameters: the learned unconditional caption rows are used only when a caption is dropped
    return DDP(module, device_ids=ids, find_unused_parameters=module.stage == 2)


# ------------------------------------------------------------------------------------------------ the loop
def train_stage(cfg: TrainConfig, root: str, ctx: Context, tracker: Tracker | None = None,
                options: LoopOptions | None = None) -> dict:
    """Run (or resume) one training stage on this worker; returns a summary (rank 0 has the export path)."""
    options = options or LoopOptions()
    tracker = tracker or Tracker()
    rank, world = ctx.rank, ctx.world_size
    if options.device:
        device = torch.device(options.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = torch.device("cpu")
    model, text_encoder = build_models(cfg, device)
    mcfg, tok_cfg = model.cfg, model.tokenizer.cfg
    schedule = get_schedule(mcfg.pn, 1.0, tok_cfg.patch)
    grids, patch = list(schedule.grids), tok_cfg.patch
    hr_size, lr_size = schedule.image_size[0], mcfg.lr_size
    opts = Stage2Options(k_t=mcfg.k_t, caption_drop=cfg.caption_drop, loss_from_scale=cfg.loss_from_scale,
                         reweight_by_scale=cfg.reweight_by_scale, flip_layers=cfg.bsc_flip_layers,
                         flip_strength=cfg.bsc_flip_strength, down=tok_cfg.z_down, up=tok_cfg.z_up,
                         next_mode=cfg.next_mode)
    set_backend(cfg.attention)  # this worker process's self-attention kernel ("flex" falls back to SDPA on CPU)
    if cfg.compile:
        model.transformer.compile_blocks()
    stage_module = StageModule(model, cfg.stage)
    trained = wrap(stage_module, cfg, world, device)
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    micro = cfg.micro_batch(world)
    versions = pick_versions(root, cfg.deg_hash, cfg.cap_hash)
    stream = BatchStream(root, versions, rank, world, micro, hr_size, lr_size, seed=cfg.seed,
                         block_size=cfg.data_block_size, exclude=holdout_keys(root, cfg.holdout))
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    torch.manual_seed(cfg.seed * 1000 + rank + 1)  # dropout / drop-path streams differ per rank

    step = 0
    last = ctx.latest_checkpoint()
    if last is not None:
        step = restore(last, cfg, stage_module, trained, optimizer, scheduler, stream, generator, rank, world)
    caption_cache = _caption_cache(options.caption_cache, text_encoder)
    dataset_id = hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:8] + "-" + versions.deg_hash
    latents = LatentCache(options.latent_cache, model.tokenizer, dataset_id)
    # DDP autocasts on CUDA only (CPU trains fp32). FSDP gathers the blocks in bf16 whenever cfg.bf16, on any device
    # (fsdp.py), so its forward autocasts too: the model keeps its residual stream and its head in fp32.
    bf16 = cfg.bf16 and (device.type == "cuda" or cfg.strategy == "fsdp")
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    tokens_per_sample = schedule.num_tokens
    summary: dict = {"resumed_from_step": step, "start_step": step, "versions": vars(versions)}
    stage_module.train()
    model.tokenizer.eval()
    with tracker:
        while step < cfg.steps:
            t0 = time.perf_counter()
            stats_acc: dict[str, float] = {}
            keys: list[str] = []
            for m in range(cfg.grad_accum):
                batch = next(stream)
                keys += batch.keys
                z_hr, z_lr = latents.encode(model.tokenizer, batch)
                text = _encode_text(text_encoder, batch.captions, caption_cache) if cfg.stage == 2 else None
                sync = m == cfg.grad_accum - 1 or not hasattr(trained, "no_sync")
                with (nullcontext() if sync else trained.no_sync()), amp:
                    loss, stats = trained(z_lr, z_hr, text, grids, patch, opts, generator)
                (loss / cfg.grad_accum).backward()
                for k, v in stats.items():
                    stats_acc[k] = stats_acc.get(k, 0.0) + v / cfg.grad_accum
            grad_norm = clip(trained, params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            dt = time.perf_counter() - t0
            samples = micro * cfg.grad_accum
            metrics = {**{f"train/{k}": v for k, v in stats_acc.items()}, "train/lr": scheduler.get_last_lr()[0],
                       "train/grad_norm": grad_norm, "train/epoch": stream.epoch,
                       "perf/samples_per_s_per_worker": samples / dt,
                       "perf/tokens_per_s_per_worker": samples * tokens_per_sample / dt, "step": step}
            _log_keys(options.hooks, rank, step, keys, stats_acc.get("loss"))
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                tracker.metrics({k: v for k, v in metrics.items() if k != "step"}, step)
            if cfg.image_every and step % cfg.image_every == 0 and (rank == 0 or cfg.strategy == "fsdp"):
                # Under FSDP the sampling forward is collective (sharded blocks are all-gathered), so every rank
                # draws its grid in lockstep (same scales, same tiles), root unit gathered, under the training
                # autocast; rank 0 logs it.
                from nsarm.train.fsdp import root_gathered

                with root_gathered(stage_module) if cfg.strategy == "fsdp" else nullcontext(), \
                        amp if cfg.strategy == "fsdp" else nullcontext():
                    grid = preview_grid(model, batch, cfg.stage, text_encoder)
                if rank == 0:
                    tracker.image(grid, f"samples/step_{step:06d}.png")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(cfg, ctx, metrics, step, stage_module, trained, optimizer, scheduler, stream, generator)
            _maybe_fail(options.hooks, rank, step)
            summary.update(step=step, **{k: v for k, v in metrics.items() if k.startswith("train/")})
        if options.export_dir:
            export_target = model
            if cfg.strategy == "fsdp":  # collective: gather the shards, rank 0 builds a CPU copy to export
                from nsarm.train.fsdp import consolidated_model

                export_target = consolidated_model(model, trained, cfg.stage, rank)
            if rank == 0:
                from nsarm.train.export import export_model

                summary["export"] = export_model(export_target, options.export_dir, text_encoder=text_encoder,
                                                 extra={"train_config": cfg.to_dict(), "step": step})
    return summary


def clip(module: nn.Module, params: list[nn.Parameter], max_norm: float) -> float:
    if max_norm <= 0:
        norms = [p.grad.detach().norm() for p in params if p.grad is not None]
        return float(torch.norm(torch.stack(norms))) if norms else 0.0
    if hasattr(module, "clip_grad_norm_"):  # FSDP1 exposes its own (sharded-aware) clip
        return float(module.clip_grad_norm_(max_norm))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def _caption_cache(path: str | None, text_encoder):
    if not path or text_encoder is None:
        return None
    from nsarm.text import CaptionCache

    return CaptionCache(path, text_encoder.encoder_id)


def _encode_text(text_encoder, captions: list[str], cache):
    from nsarm.text import encode_cached

    # an empty caption still yields ≥ 1 token (T5 appends </s>), so every sample has a valid text sequence
    return encode_cached(text_encoder, captions, cache)


# ------------------------------------------------------------------------------------------------ checkpoints
def save(cfg, ctx: Context, metrics: dict, step: int, stage_module: StageModule, trained: nn.Module, optimizer,
         scheduler, stream: BatchStream, generator: torch.Generator) -> None:
    """All ranks: gather RNG; FSDP ranks write their shards; rank 0 writes train_state.pt; everyone reports."""
    rng = st.gather_rng(generator, ctx.world_size)
    data = st.gather(stream.state_dict(), ctx.world_size)  # ranks differ when held-out keys fall unevenly
    tmp = Path(tempfile.mkdtemp(prefix=f"nsarm-ckpt-r{ctx.rank}-"))
    try:
        fsdp = cfg.strategy == "fsdp"
        if fsdp:
            from nsarm.train.fsdp import save_sharded

            save_sharded(trained, optimizer, tmp / "model")
        if ctx.rank == 0:
            st.save_state(tmp, step=step, data=data, rng=rng,
                          optimizer=None if fsdp else optimizer.state_dict(), scheduler=scheduler.state_dict(),
                          model=None if fsdp else _trainable_state(stage_module),
                          train_config=cfg.to_dict(), model_config=stage_module.model_config,
                          world_size=ctx.world_size)
        ctx.report(metrics, tmp if (ctx.rank == 0 or fsdp) else None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _trainable_state(stage_module: StageModule) -> dict:
    return {k: v.detach().cpu().clone() for k, v in stage_module.state_dict().items()}


def restore(directory: Path, cfg: TrainConfig, stage_module: StageModule, trained: nn.Module, optimizer, scheduler,
            stream: BatchStream, generator: torch.Generator, rank: int, world: int) -> int:
    """Load a checkpoint on this rank; returns the step to continue from."""
    state = st.load_state(directory)
    if state["train_config"].get("stage") != cfg.stage:
        raise ValueError(f"checkpoint {directory} is from stage {state['train_config'].get('stage')}, "
                         f"this run is stage {cfg.stage}; use a new run name for another stage")
    if state["world_size"] != world:
        raise ValueError(f"checkpoint {directory} was written by {state['world_size']} workers, this run has "
                         f"{world}; resume with the same num_workers")
    if cfg.strategy == "fsdp":
        from nsarm.train.fsdp import load_sharded

        load_sharded(trained, optimizer, Path(directory) / "model")
    else:
        stage_module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    stream.load_state_dict(state["data"][rank])
    st.set_rng_state(state["rng"][rank], generator)
    return int(state["step"])


def export_training_checkpoint(checkpoint_dir: str | Path, uri: str) -> dict:
    """Consolidate a (DDP) training checkpoint directory written by the loop into an export at `uri`."""
    from nsarm.train.export import export_model

    state = st.load_state(Path(checkpoint_dir))
    if state["model"] is None:
        raise ValueError(f"{checkpoint_dir} is a sharded (FSDP) checkpoint; export it from the training job")
    cfg = TrainConfig.from_dict(state["train_config"])
    model, text_encoder = build_models(cfg, torch.device("cpu"))
    StageModule(model, cfg.stage).load_state_dict(state["model"])
    return export_model(model, uri, text_encoder=text_encoder, extra={"train_config": cfg.to_dict(),
                                                                      "step": state["step"]})


# ------------------------------------------------------------------------------------------------ previews, hooks
@torch.no_grad()
def preview_grid(model: NSARMModel, batch, stage: int, text_encoder=None, n: int = 1):
    """uint8 (H, n·3W... ) grid: rows of [bicubic LR | SR | HR] for the first n samples of the batch."""
    import numpy as np

    from nsarm.bits import bsq_quantize
    from nsarm.inference import SamplingConfig, bicubic_upscale, upscale_tiles
    from nsarm.scales import sum_codes

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    lr = batch.lr_B3hw[:n].to(device)
    hr = batch.hr_B3HW[:n]
    if stage == 2 and text_encoder is not None:
        text = text_encoder.encode(batch.captions[:n])
        gens = [torch.Generator(device=device).manual_seed(1 + i) for i in range(n)]
        sampling = SamplingConfig(cfg_scale=1.0, tau=model.cfg.tau, top_p=model.cfg.top_p, next_mode=model.cfg.next_mode)
        sr = upscale_tiles(model, lr, text, sampling, gens).cpu()
    else:  # stage 1: what the transformation network alone reconstructs (its K_t quantised scales)
        z_lr = model.tokenizer.encode_raw(lr * 2 - 1)
        codes = [bsq_quantize(r.float())[0] for r in model.map_transformer(z_lr)]
        full = (hr.shape[-2] // model.tokenizer.cfg.downsample, hr.shape[-1] // model.tokenizer.cfg.downsample)
        sr = ((model.tokenizer.decode(sum_codes(codes, full, model.tokenizer.cfg.z_up)) + 1) / 2).cpu()
    model.train(was)
    rows = []
    for i in range(n):
        up = bicubic_upscale(batch.lr_B3hw[i], tuple(hr.shape[-2:]))
        rows.append(torch.cat([up, sr[i].clamp(0, 1), hr[i]], dim=2))
    grid = torch.cat(rows, dim=1)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _log_keys(hooks: dict, rank: int, step: int, keys: list[str], loss: float | None = None) -> None:
    """Test hook: append the sample keys (and this rank's loss) of each step to a per-rank JSONL (proves no
    repeat/skip on resume; lets tests compare DDP and FSDP step by step)."""
    path = hooks.get("sample_log")
    if path:
        import json

        with open(f"{path}.rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "keys": keys, "loss": loss}) + "\n")


def _maybe_fail(hooks: dict, rank: int, step: int) -> None:
    at, marker = hooks.get("fail_at_step"), hooks.get("marker")
    if at is None or step != int(at) or rank != int(hooks.get("fail_rank", 0)):
        return
    if marker and Path(marker).exists():
        return
    if marker:
        Path(marker).parent.mkdir(parents=True, exist_ok=True)
        Path(marker).write_text(f"worker rank {rank} killed after step {step}\n")
    # Ray Train (v2) registers a checkpoint when its controller has polled the report of EVERY worker (every 2 s);
    # a worker that dies within that window takes its report with it and the run restarts from the one before.
    # The hook models a crash some seconds after the last checkpoint, which is what the test asserts about.
    time.sleep(float(hooks.get("fail_delay_s", 6.0)))
    os._exit(17)  # a hard crash: no cleanup, no exception for the framework to catch

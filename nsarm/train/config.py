"""Training configuration: one frozen `TrainConfig` per stage, and named presets (tiny, NSARM-8B 16 GPU).

    cfg = train_config("tiny", stage=1, steps=40)          # preset + overrides
    scaling = scaling_for("nsarm-8b-16gpu", stage=2)        # how many Ray Train workers, GPUs, CPUs
    train_preset("tiny").tokenizer_warm_up                 # True: the flow trains the tiny tokenizer first

A preset (`TrainPreset`) is one record: both stages' configs, their Ray Train scaling, and whether the train-nsarm
flow warms up a tokenizer on the dataset before stage 1.

Paper defaults (docs/DESIGN.md §5, NSARM Sec. 4): stage 1 trains the transformation network alone (MSE, lr 2e-5, 100K
iterations, batch 196); stage 2 fine-tunes transformer + transformation network end to end (bitwise CE, lr 4e-5,
40K iterations, batch 32). Optimiser settings follow the released Infinity trainer (spec §2.4): AdamW β (0.9, 0.97),
gradient clip 5, bf16. Values the paper does not state (warm-up length, schedule shape, weight decay) are marked
UNVERIFIED and chosen conservatively.

`batch_size` is the GLOBAL batch per optimiser step = per-worker micro batch × workers × `grad_accum`; the
per-worker micro batch is derived at run time (`micro_batch`) and must divide evenly (a clear error otherwise).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dataset import configs

STRATEGIES = ("ddp", "fsdp")
SCHEDULES = ("cosine", "constant", "linear")
ATTENTIONS = ("sdpa", "flex")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation + data + checkpoint settings of one training stage (architecture lives in ModelConfig)."""

    stage: int = 1  # 1: transformation net alone (MSE); 2: end-to-end (bitwise CE on Alg. 2 targets)
    model: str = "nsarm-8b"  # nsarm.model preset name
    steps: int = 100_000  # optimiser steps (paper: 100K stage 1, 40K stage 2)
    batch_size: int = 196  # global batch per optimiser step (paper: 196 stage 1, 32 stage 2)
    grad_accum: int = 1  # micro steps per optimiser step
    lr: float = 2e-5  # peak learning rate (paper: 2e-5 stage 1, 4e-5 stage 2); not scaled by batch (spec §5.5)
    betas: tuple[float, float] = (0.9, 0.97)  # released Infinity trainer
    weight_decay: float = 0.0  # UNVERIFIED (not stated); 0 keeps a fine-tune close to its initialisation
    warmup_steps: int = 500  # UNVERIFIED: linear warm-up from 0
    schedule: str = "constant"  # after warm-up: 'constant' | 'cosine' | 'linear' (decay to min_lr_ratio · lr)
    min_lr_ratio: float = 0.1
    grad_clip: float = 5.0  # released Infinity trainer (tclip 5); 0 = off
    seed: int = 0  # parameter init of fresh modules, data order, caption drop, BSC flips
    # -- stage-2 loss (spec §2.4, §5.5)
    caption_drop: float = 0.1  # fraction of captions replaced by the learned unconditional embedding (CFG)
    bsc_flip_layers: int = 0  # Bitwise Self-Correction on scales < this (0 = off; the NSARM run name says NOFlip)
    bsc_flip_strength: float = 0.3  # max flip probability per scale (official 0.3)
    next_mode: str = "trilinear"  # next-scale input interpolation in training (NSARM/Infinity trainers)
    loss_from_scale: int | None = None  # CE only on scales ≥ this; None = K_t (the map net supplies the rest)
    reweight_by_scale: bool = True  # token weight ∝ √(h_K w_K / (h w)), normalised (reweight_loss_by_scale=1)
    # -- parallelism / precision
    strategy: str = "ddp"  # 'ddp' for small presets, 'fsdp' (blocks as units) for 2B/8B
    bf16: bool = True  # DDP: autocast bf16 on CUDA (CPU fp32); FSDP: bf16 blocks + autocast on any device
    activation_checkpointing: bool = False  # per transformer block (FSDP presets)
    attention: str = "sdpa"  # block-causal self-attention: 'sdpa' (dense mask) | 'flex' (official use_flex_attn)
    compile: bool = False  # torch.compile each transformer block in place, inside its FSDP unit (keys unchanged)
    # -- initialisation (paths; None = fresh seeded init, the tiny preset)
    tokenizer_path: str | None = None  # frozen BSQ-VAE weights (official .pth or our .safetensors)
    text_encoder_path: str | None = None  # T5 snapshot dir; None with a 'tiny-t5' model = the seeded tiny T5
    init_from: str | None = None  # our-format checkpoint dir (stage 2: the stage-1 export) or an official .pth
    # -- data (dataset root layout docs/DESIGN.md §3)
    deg_hash: str | None = None  # LR version under {root}/lr/; None = the only complete one
    cap_hash: str | None = None  # caption version under {root}/captions/; None = the only one (or no captions)
    data_block_size: int = 256  # reader shuffle block inside a shard
    holdout: int = 0  # samples at the end of the last shard kept out of training (the flow's evaluation split)
    # -- checkpoints and logging
    checkpoint_every: int = 1000  # optimiser steps between checkpoints (and at the last step)
    keep_checkpoints: int = 3  # last K kept (Ray CheckpointConfig(num_to_keep))
    log_every: int = 10  # metrics to MLflow every N steps (rank 0)
    image_every: int = 1000  # LR|SR|HR grid to MLflow every N steps (0 = off)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"TrainConfig.stage must be 1 or 2, got {self.stage}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"TrainConfig.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"TrainConfig.attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 <= self.caption_drop <= 1:
            raise ValueError(f"TrainConfig.caption_drop must be in [0, 1], got {self.caption_drop}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")

    def micro_batch(self, world_size: int) -> int:
        """Per-worker batch of one micro step; raises when the global batch does not split evenly."""
        per = world_size * self.grad_accum
        if self.batch_size % per:
            raise ValueError(
                f"TrainConfig.batch_size {self.batch_size} is not divisible by workers × grad_accum = "
                f"{world_size} × {self.grad_accum}"
            )
        return self.batch_size // per

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Load a saved config (checkpoint meta, export); missing keys take defaults, unknown ones raise."""
        return configs.from_dict(cls, d)


@dataclass(frozen=True)
class ScalingSpec:
    """Ray Train workers of a stage (ScalingConfig); per-worker resources."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # only with use_gpu

    def resources_per_worker(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            res["GPU"] = self.gpus_per_worker
        return res


@dataclass(frozen=True)
class TrainPreset:
    """Everything a training preset fixes, in one record: per stage its config and its Ray Train scaling."""

    stage1: TrainConfig  # transformation net alone
    stage2: TrainConfig  # end to end, starting from the stage-1 export
    scaling1: ScalingSpec
    scaling2: ScalingSpec
    # The train-nsarm flow trains the preset's tokenizer on the dataset's HR images before stage 1 (when no
    # tokenizer_path is given): for a fresh tiny model, whose random tokenizer would bound the quality far below
    # what the data allows (benchmarks/RESULTS.md "Tokenizer"). Presets that load released weights never do.
    tokenizer_warm_up: bool = False

    def __post_init__(self) -> None:
        if (self.stage1.stage, self.stage2.stage) != (1, 2):
            raise ValueError(f"TrainPreset: stage1/stage2 configs say stage {self.stage1.stage}/{self.stage2.stage}")

    def config(self, stage: int) -> TrainConfig:
        """The TrainConfig of `stage` (1 or 2)."""
        return (self.stage1, self.stage2)[_stage_index(stage)]

    def scaling(self, stage: int) -> ScalingSpec:
        """The Ray Train workers and per-worker resources of `stage` (1 or 2)."""
        return (self.scaling1, self.scaling2)[_stage_index(stage)]


def _stage_index(stage: int) -> int:
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    return stage - 1


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------

_TINY = dict(model="tiny", strategy="ddp", bf16=False, warmup_steps=5, checkpoint_every=10, keep_checkpoints=2,
             log_every=1, image_every=20, data_block_size=64)

TRAIN_PRESETS: dict[str, TrainPreset] = {
    # CPU tests and the demo: 2 gloo workers × 2 samples; lr far above the paper's because the model is fresh.
    "tiny": TrainPreset(
        stage1=TrainConfig(stage=1, steps=60, batch_size=4, lr=2e-3, **_TINY),
        stage2=TrainConfig(stage=2, steps=60, batch_size=4, lr=1e-3, **_TINY),
        scaling1=ScalingSpec(2, False, 1.0),
        scaling2=ScalingSpec(2, False, 1.0),
        tokenizer_warm_up=True,
    ),
    # Benchmarks: Infinity-2B shapes (d32 tokenizer, no map net) are not trainable here; see benchmarks/training.py.
    # The paper's run: NSARM-8B on 2 nodes × 8 GPUs (documented, not runnable on CPU).
    #   Stage 1: 196 = 14 × 14 is not divisible by 16, so stage 1 uses 14 of the 16 GPUs (7 per node), 14 samples
    #            each, no accumulation. The transformation net (385M params) trains alone with the 8B transformer
    #            unused and the VAE frozen, so plain DDP fits an 80 GB GPU.
    #   Stage 2: all 16 GPUs, micro batch 1, grad_accum 2 → 32; FSDP with one unit per block, bf16 params/compute,
    #            fp32 reduce, activation checkpointing per block (8.76B params: ~17.5 GB bf16 + AdamW fp32 state
    #            ≈ 105 GB total, sharded /16 ≈ 6.6 GB per GPU plus activations of 10521 tokens per sample).
    "nsarm-8b-16gpu": TrainPreset(
        stage1=TrainConfig(stage=1, model="nsarm-8b", steps=100_000, batch_size=196, grad_accum=1, lr=2e-5,
                           strategy="ddp", warmup_steps=1000, checkpoint_every=2000, log_every=10, image_every=2000),
        stage2=TrainConfig(stage=2, model="nsarm-8b", steps=40_000, batch_size=32, grad_accum=2, lr=4e-5,
                           strategy="fsdp", activation_checkpointing=True, warmup_steps=500, checkpoint_every=1000,
                           log_every=10, image_every=1000),
        scaling1=ScalingSpec(14, True, 8.0, 1.0),
        scaling2=ScalingSpec(16, True, 8.0, 1.0),
    ),
}


def train_preset(name: str) -> TrainPreset:
    """The named training preset; an unknown name raises naming the choices (the flow calls this first)."""
    return configs.resolve(TRAIN_PRESETS, name, "training")


def train_config(preset: str, stage: int, **overrides) -> TrainConfig:
    """The preset's config of `stage` with field overrides (`None` = not given; unknown fields raise, naming the
    valid ones)."""
    return configs.override(train_preset(preset).config(stage), **overrides)


def scaling_for(preset: str, stage: int) -> ScalingSpec:
    """Ray Train workers and per-worker resources of the preset's `stage`."""
    return train_preset(preset).scaling(stage)

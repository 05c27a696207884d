"""The assembled model: tokenizer (BSQ-VAE) + Infinity transformer + optional transformation network, from a preset.

    cfg = model_config("tiny")                 # or "infinity-2b", "infinity-8b", "nsarm-8b"
    model = build_model(cfg)                   # NSARMModel with .tokenizer, .transformer, .map_transformer
    with torch.device("meta"): big = build_model("nsarm-8b")   # shapes only, no memory (checkpoints.py fills it)

The text encoder is not a child module (it is frozen, loaded from its own directory and shared across runs);
see nsarm/text.py. `ModelConfig.text_encoder` names which one the model was trained with.
Official key layout: NSARM.pth = the transformer's keys at top level + `map_transformer.*`
(`official_state_dict`); our own checkpoints prefix each part (`transformer.`, `map_transformer.`, `tokenizer.`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from dataset import configs
from nsarm.config import TOKENIZER_PRESETS, TokenizerConfig
from nsarm.transform_net import TRANSFORM_NET_PRESETS, TransformNet, TransformNetConfig
from nsarm.transformer import TRANSFORMER_PRESETS, InfinityTransformer, TransformerConfig


@dataclass(frozen=True)
class ModelConfig:
    """One whole model. Defaults = the released NSARM (Infinity-8B + d14-f8-patchify VAE + map net, flan-t5-xl)."""

    name: str = "nsarm-8b"
    tokenizer: TokenizerConfig = field(default_factory=lambda: TOKENIZER_PRESETS["d14-f8-patchify"])
    transformer: TransformerConfig = field(default_factory=lambda: TRANSFORMER_PRESETS["infinity-8b"])
    transform_net: TransformNetConfig | None = field(default_factory=lambda: TRANSFORM_NET_PRESETS["nsarm-8b"])
    text_encoder: str = "flan-t5-xl"  # "flan-t5-xl" (local dir given at run time) or "tiny-t5" (built from a seed)
    pn: str = "1M"  # scale schedule size of the output image (1024² for 1M)
    # Sampling defaults of the release (scripts/infer.sh for NSARM; reproduce.py for Infinity-2B)
    cfg_scale: float = 1.0
    tau: float = 0.5
    top_p: float = 0.97
    next_mode: str = "area"  # next-scale input interpolation at inference (NSARM release: area; Infinity: trilinear)

    @property
    def k_t(self) -> int:
        """Scales supplied by the transformation network (0 for a plain text-to-image model)."""
        return self.transform_net.num_scales if self.transform_net else 0

    @property
    def lr_size(self) -> int:
        """Native LR tile side in pixels (256 for NSARM-8B): the map net's LayerNorms fix the LR latent side."""
        if self.transform_net is None:
            raise ValueError(f"model {self.name!r} has no transformation network (text-to-image only)")
        return self.transform_net.latent_hw * self.tokenizer.downsample

    def validate(self) -> ModelConfig:
        if self.transformer.d_vae != self.tokenizer.token_bits:
            raise ValueError(
                f"{self.name}: transformer d_vae {self.transformer.d_vae} != tokenizer bits per token {self.tokenizer.token_bits}"
            )
        if self.transform_net and self.transform_net.latent_channels != self.tokenizer.codebook_dim:
            raise ValueError(f"{self.name}: transformation net channels != tokenizer codebook_dim")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of `to_dict`: JSON lists back to tuples, the three part configs rebuilt from their dicts.
        Unknown keys are an error (no silent drift)."""
        return configs.from_dict(cls, d)


MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny",
        tokenizer=TOKENIZER_PRESETS["tiny"],
        transformer=TRANSFORMER_PRESETS["tiny"],
        transform_net=TRANSFORM_NET_PRESETS["tiny"],
        text_encoder="tiny-t5",
        pn="0.06M",
    ),
    "infinity-2b": ModelConfig(
        name="infinity-2b",
        tokenizer=TOKENIZER_PRESETS["d32-f16"],
        transformer=TRANSFORMER_PRESETS["infinity-2b"],
        transform_net=None,
        cfg_scale=3.0,
        next_mode="trilinear",
    ),
    "infinity-8b": ModelConfig(
        name="infinity-8b", transform_net=None, cfg_scale=3.0, tau=1.0, next_mode="trilinear"
    ),
    "nsarm-8b": ModelConfig(),
}


def model_config(preset: str | ModelConfig) -> ModelConfig:
    """Resolve a preset name (or pass a config through); unknown names raise with the list of choices."""
    if isinstance(preset, ModelConfig):
        return preset.validate()
    return configs.resolve(MODEL_PRESETS, preset, "model").validate()


class NSARMModel(nn.Module):
    """Container of the three networks; procedures (inference.py, train/) take it as an argument."""

    def __init__(self, cfg: ModelConfig, with_tokenizer: bool = True):
        super().__init__()
        self.cfg = cfg.validate()
        self.tokenizer = None
        if with_tokenizer:
            from nsarm.tokenizer import build_tokenizer  # Model core I

            self.tokenizer = build_tokenizer(cfg.tokenizer)
        self.transformer = InfinityTransformer(cfg.transformer)
        self.map_transformer = TransformNet(cfg.transform_net) if cfg.transform_net else None

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """Transformer + map net in the released key layout (NSARM.pth / infinity_*.pth)."""
        return official_state_dict(self.transformer, self.map_transformer)


def official_state_dict(transformer: nn.Module, map_transformer: nn.Module | None = None) -> dict[str, torch.Tensor]:
    sd = dict(transformer.state_dict())
    if map_transformer is not None:
        sd.update({f"map_transformer.{k}": v for k, v in map_transformer.state_dict().items()})
    return sd


def build_model(preset: str | ModelConfig, with_tokenizer: bool = True) -> NSARMModel:
    """Build a randomly initialised model (under `torch.device('meta')` for shapes only)."""
    return NSARMModel(model_config(preset), with_tokenizer=with_tokenizer)

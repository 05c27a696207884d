"""The one way an NSARM model and its text encoder are loaded: by training, `nsarm upscale` / `nsarm eval` / the
MLflow model, and the held-out evaluation, from the same plain arguments and under the same rules.

    model = load_model("tiny")                                              # fresh weights (seed first)
    model = load_model(init_from="runs/…/export/step000060-ab12cd34")       # ours: its config.json decides
    model = load_model("nsarm-8b", "NSARM.pth", tokenizer_path="infinity_vae_d56_f8_14_patchify.pth")
    enc = load_text_encoder(model.cfg, text_encoder_path=None, checkpoint="runs/…/export/step…")
    model, enc = load_for_upscaling(init_from=ckpt, text_encoder_path=t5_dir, device="cuda")   # both, for inference

Rules, for every caller:
- `init_from` None: a fresh model of `preset`; a directory with config.json: our checkpoint (its own architecture);
  anything else: official weights of `preset`, `NSARM.pth` (with map_transformer.* keys) or, where the caller
  allows it (`infinity_ok`, training's stage-1 start), Infinity weights with a fresh transformation network.
  Official weights carry no VAE: `tokenizer_path` is then required; given with our checkpoint it replaces the
  saved tokenizer.
- text encoder: `text_encoder_path`, else the one saved beside the checkpoint (`text_encoder/`), else, only when
  the model's config names the seeded tiny T5 (`text_encoder="tiny-t5"`, the tiny preset), that one, built here;
  any other model without a text encoder is a LoadError naming the missing directory. Its width must be the
  transformer's `text_channels`.
Every problem is one LoadError (an InputError, so the CLI prints one line) naming the argument as the caller calls
it (`names`: `tokenizer_path` in training, `--tokenizer` on the command line).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from dataset.inputs import InputError
from nsarm.model import ModelConfig, NSARMModel, build_model, model_config

TINY_T5 = "tiny-t5"  # ModelConfig.text_encoder of models whose T5 is built from a seed (never downloaded)
ARG_NAMES = {"preset": "preset", "init_from": "init_from", "tokenizer_path": "tokenizer_path",
             "text_encoder_path": "text_encoder_path"}
CLI_NAMES = {"preset": "--preset", "init_from": "--checkpoint", "tokenizer_path": "--tokenizer",
             "text_encoder_path": "--text-encoder"}


class LoadError(InputError):
    """A model, tokenizer or text encoder that cannot be loaded from the given arguments (the message names them)."""


def is_ours(init_from: str | Path | None) -> bool:
    """Whether `init_from` is one of our checkpoint directories (config.json + model.safetensors)."""
    from nsarm.checkpoints import CONFIG

    return init_from is not None and Path(init_from).is_dir() and (Path(init_from) / CONFIG).is_file()


def config_of(preset: str | None, init_from: str | Path | None = None, names: dict = ARG_NAMES) -> ModelConfig:
    """The architecture that `load_model` would build, read without touching any weights."""
    from nsarm.checkpoints import read_model_config

    if is_ours(init_from):
        return read_model_config(init_from)
    if preset is None:
        raise LoadError(f"{names['preset']} is needed: {init_from} is not our checkpoint directory (no config.json)")
    try:
        return model_config(preset)
    except ValueError as e:  # an unknown preset: the message lists the choices
        raise LoadError(f"{names['preset']}: {e}") from None


def _check_exists(value: str | Path | None, arg: str, what: str, names: dict) -> None:
    if value is not None and not Path(value).exists():
        raise LoadError(f"{names[arg]} {value}: {what} not found")


def load_model(preset: str | None = None, init_from: str | Path | None = None,
               tokenizer_path: str | Path | None = None, *, infinity_ok: bool = False,
               names: dict = ARG_NAMES) -> NSARMModel:
    """NSARMModel (with tokenizer) on the CPU, by the module's rules; fresh weights come from torch's global RNG.

    Args:
        preset: architecture (nsarm.model presets) of a fresh model or of official weights; ignored for our
            checkpoint directories, whose config.json decides.
        init_from: None (fresh), our checkpoint directory, or official weights (NSARM.pth / Infinity .pth or dir).
        tokenizer_path: VAE weights (official .pth or ours); required with official weights.
        infinity_ok: accept Infinity weights (no map_transformer.* keys) and add a fresh transformation network.
    """
    from nsarm.tokenizer import load_tokenizer

    _check_exists(init_from, "init_from", "checkpoint", names)
    _check_exists(tokenizer_path, "tokenizer_path", "tokenizer weights", names)
    mcfg = config_of(preset, init_from, names)
    if init_from is None:
        model = build_model(mcfg)
    elif is_ours(init_from):
        from nsarm.checkpoints import load_checkpoint

        model = load_checkpoint(init_from)
    else:
        if tokenizer_path is None:
            raise LoadError(f"{names['init_from']} {init_from} is an official checkpoint without the VAE: "
                            f"{names['tokenizer_path']} (the d56 VAE .pth) is required")
        model = _load_official(mcfg, init_from, infinity_ok, names)
    if tokenizer_path is not None:
        model.tokenizer = load_tokenizer(tokenizer_path, mcfg.tokenizer)
    if model.tokenizer is None:
        raise LoadError(f"{names['init_from']} {init_from} has no tokenizer weights: pass {names['tokenizer_path']}")
    return model


def _load_official(mcfg: ModelConfig, path: str | Path, infinity_ok: bool, names: dict) -> NSARMModel:
    """NSARM.pth, or Infinity weights + a fresh transformation network (the paper's stage-1 start); no tokenizer
    yet (official weights never hold one)."""
    from nsarm.checkpoints import load_infinity, load_nsarm, read_state_dict
    from nsarm.transform_net import TransformNet

    # memory-mapped: listing the keys does not read an 8B checkpoint
    if any(k.startswith("map_transformer.") for k in read_state_dict(path)):
        return load_nsarm(path, mcfg)
    if not infinity_ok:
        raise LoadError(f"{names['init_from']} {path} holds no map_transformer.* weights: Infinity weights, "
                        "not an NSARM checkpoint")
    if mcfg.transform_net is None:
        raise LoadError(f"{names['preset']} {mcfg.name!r} has no transformation network to add to {path}")
    with torch.device("meta"):  # no random 8B transformer that the official weights would replace
        model = NSARMModel(mcfg, with_tokenizer=False)
    model.transformer = load_infinity(path, mcfg)
    model.map_transformer = TransformNet(mcfg.transform_net)
    return model


def text_encoder_source(mcfg: ModelConfig, text_encoder_path: str | Path | None = None,
                        checkpoint: str | Path | None = None, names: dict = ARG_NAMES) -> Path | None:
    """The T5 directory a model needs (None: the seeded tiny T5 its config names), decided from the config alone,
    so a missing encoder of an 8B model is reported before its weights are read."""
    from nsarm.checkpoints import text_encoder_dir

    _check_exists(text_encoder_path, "text_encoder_path", "text encoder directory", names)
    if text_encoder_path is not None:
        return Path(text_encoder_path)
    saved = text_encoder_dir(checkpoint) if is_ours(checkpoint) else None
    if saved is not None:
        return saved
    if mcfg.text_encoder == TINY_T5:
        return None
    raise LoadError(f"model {mcfg.name!r} needs {names['text_encoder_path']} (a local {mcfg.text_encoder} directory)")


def load_text_encoder(mcfg: ModelConfig, text_encoder_path: str | Path | None = None,
                      checkpoint: str | Path | None = None, *, device: str | torch.device = "cpu",
                      names: dict = ARG_NAMES):
    """The model's frozen text encoder (nsarm.text.TextEncoder), by `text_encoder_source`; the tiny T5 stays on the
    CPU and is built once per process (it trains a BPE tokenizer, ~seconds)."""
    from nsarm import text

    source = text_encoder_source(mcfg, text_encoder_path, checkpoint, names)
    width = mcfg.transformer.text_channels
    enc = text.load_text_encoder(source, device=device) if source is not None else _tiny_text_encoder(width)
    if enc.width != width:
        raise LoadError(f"text encoder {source or TINY_T5} has width {enc.width}, model {mcfg.name!r} needs "
                        f"text_channels {width}")
    return enc


@functools.lru_cache(maxsize=2)
def _tiny_text_encoder(width: int):
    from nsarm.text import build_tiny_text_encoder

    return build_tiny_text_encoder(d_model=width)


def load_for_upscaling(preset: str | None = None, init_from: str | Path | None = None,
                  tokenizer_path: str | Path | None = None, text_encoder_path: str | Path | None = None, *,
                  device: str | torch.device | None = None, names: dict = ARG_NAMES):
    """(model in eval mode on `device`, text encoder): what inference and evaluation upscale with. The text encoder
    is checked first (from the config), then the weights are read."""
    if init_from is None:
        raise LoadError(f"{names['init_from']} is required to upscale (a trained checkpoint)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _check_exists(init_from, "init_from", "checkpoint", names)
    source = text_encoder_source(config_of(preset, init_from, names), text_encoder_path, init_from, names)
    model = load_model(preset, init_from, tokenizer_path, names=names).to(device).eval()
    return model, load_text_encoder(model.cfg, source, device=device, names=names)

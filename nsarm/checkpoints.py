"""Checkpoint I/O: the official release formats and our own (safetensors weights + config JSON).

Official formats (spec §1.8, §5.1):
    infinity_2b_reg.pth                 plain state dict (pickle)           -> load_infinity(path, "infinity-2b")
    infinity_8b_weights/                sharded safetensors + index json    -> load_infinity(dir, "infinity-8b")
    ar-ckpt-*.pth                       {'trainer': {'gpt_fsdp': sd}, ...}  -> unwrapped automatically
    NSARM.pth                           8B keys + map_transformer.* keys    -> load_nsarm(path, tokenizer_path=...)
    infinity_vae_*.pth                  {'vae': sd}                         -> nsarm.tokenizer.load_tokenizer
Our format (a directory): `model.safetensors` (keys `transformer.*`, `map_transformer.*`, `tokenizer.*`),
`config.json` ({"format": "nsarm-model", "version": 1, "config": ModelConfig.to_dict()}), optionally
`text_encoder/` (HF layout) for models trained with the tiny T5.

Every pickle is read with `torch.load(weights_only=True)` (an untrusted file cannot run code). Big presets are
built on the `meta` device and filled with `load_state_dict(assign=True)` from memory-mapped tensors, so a model is
never held twice. Any missing, unexpected or mis-shaped key raises CheckpointError naming the file and the keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from nsarm.model import ModelConfig, NSARMModel, model_config
from nsarm.transformer import InfinityTransformer

FORMAT, VERSION = "nsarm-model", 1
WEIGHTS, CONFIG, TEXT_DIR = "model.safetensors", "config.json", "text_encoder"
INDEX = "model.safetensors.index.json"
# Buffers some reference checkpoints carry that our modules compute on the fly (Infinity.load_state_dict pops them)
_REFERENCE_ONLY = ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the architecture."""


# ------------------------------------------------------------------------------------------------ reading
def _torch_load(path: Path) -> object:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) pickles cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e)[:300]}") from e


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {type(e).__name__}: {str(e)[:300]}") from e


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # full training checkpoints nest the weights; slim ones are the state dict itself
    if isinstance(obj, dict) and "trainer" in obj and isinstance(obj["trainer"], dict):
        obj = obj["trainer"].get("gpt_fsdp", obj["trainer"])
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not contain a state dict (name -> tensor)")
    return dict(obj)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read weights from a .pth/.pt/.bin pickle, a .safetensors file, or a directory (sharded index or ours)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        if (path / INDEX).is_file():
            try:
                weight_map = json.loads((path / INDEX).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{path / INDEX} is not a safetensors index ({e})") from e
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if not (path / shard).is_file():
                    raise FileNotFoundError(f"shard {shard} listed in {path / INDEX} is missing")
                sd.update(_safetensors_load(path / shard))
            return sd
        if (path / WEIGHTS).is_file():
            return _safetensors_load(path / WEIGHTS)
        raise CheckpointError(f"directory {path} has neither {INDEX} nor {WEIGHTS}")
    if path.suffix == ".safetensors":
        return _safetensors_load(path)
    return _unwrap(_torch_load(path), path)


# ------------------------------------------------------------------------------------------------ loading
def _list(keys, n=12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n} more)" if len(keys) > n else "")


def load_into(module: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Fill `module` (possibly on `meta`) from `sd`; every parameter must be filled and every key used.

    Tolerated like the reference loader: `zero_k_bias` buffers missing from a file are zeros; cfg_uncond rows are
    padded/truncated to the model's text_maxlen; reference-only buffers are dropped.
    """
    sd = {k: v for k, v in sd.items() if k not in _REFERENCE_ONLY}
    own = module.state_dict(keep_vars=True)
    for k, t in own.items():
        if k not in sd and k.endswith("zero_k_bias"):
            sd[k] = torch.zeros(t.shape, dtype=t.dtype if not t.is_meta else torch.float32)
    if "cfg_uncond" in own and "cfg_uncond" in sd and sd["cfg_uncond"].shape[0] != own["cfg_uncond"].shape[0]:
        n = own["cfg_uncond"].shape[0]
        old = sd["cfg_uncond"]
        sd["cfg_uncond"] = old[:n] if old.shape[0] >= n else torch.cat([old, old.new_zeros(n - old.shape[0], old.shape[1])])
    missing, unexpected = set(own) - set(sd), set(sd) - set(own)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the architecture: {len(missing)} missing keys [{_list(missing)}], "
            f"{len(unexpected)} unexpected keys [{_list(unexpected)}]"
        )
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(t.shape)}" for k, t in own.items() if sd[k].shape != t.shape]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensors have the wrong shape: {'; '.join(bad[:8])}")
    on_meta = any(t.is_meta for t in own.values())
    module.load_state_dict(sd, strict=True, assign=on_meta)
    still = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if still:
        raise CheckpointError(f"{source}: tensors left unfilled on the meta device: {_list(still)}")
    return module


def _finish(module: nn.Module, device, dtype) -> nn.Module:
    return module.to(device=device, dtype=dtype) if dtype else module.to(device=device)


def load_infinity(
    path: str | os.PathLike, preset: str = "infinity-2b", device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> InfinityTransformer:
    """Official Infinity transformer weights (`infinity_2b_reg.pth`, the 8B shard directory) -> InfinityTransformer."""
    cfg = model_config(preset).transformer
    with torch.device("meta"):
        model = InfinityTransformer(cfg)
    sd = read_state_dict(path)
    sd = {k: v for k, v in sd.items() if not k.startswith("map_transformer.")}  # an NSARM.pth also holds the 8B keys
    return _finish(load_into(model, sd, str(path)), device, dtype).eval()


def load_nsarm(
    path: str | os.PathLike,
    preset: str | ModelConfig = "nsarm-8b",
    tokenizer_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> NSARMModel:
    """`NSARM.pth` (Infinity-8B + map_transformer) [+ the official d56 VAE] -> NSARMModel.

    Without `tokenizer_path` the model has no tokenizer (enough for logits / key checks, not for upscaling).
    """
    cfg = model_config(preset)
    with torch.device("meta"):
        model = NSARMModel(cfg, with_tokenizer=False)
    sd = read_state_dict(path)
    prefix = "map_transformer."
    load_into(model.transformer, {k: v for k, v in sd.items() if not k.startswith(prefix)}, f"{path} (transformer)")
    if model.map_transformer is None:
        raise CheckpointError(f"preset {cfg.name!r} has no transformation network; use load_infinity for {path}")
    map_sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    load_into(model.map_transformer, map_sd, f"{path} (map_transformer)")
    if tokenizer_path is not None:
        from nsarm.tokenizer import load_tokenizer

        model.tokenizer = load_tokenizer(tokenizer_path, cfg.tokenizer)
    return _finish(model, device, dtype).eval()


# ------------------------------------------------------------------------------------------------ our format
def save_checkpoint(model: NSARMModel, directory: str | os.PathLike, text_encoder=None, extra: dict | None = None) -> Path:
    """Write `model` to `directory` in our format (weights then config.json last, each via a temp file + rename)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if v.data_ptr() in seen and v.numel():  # safetensors refuses aliased tensors (the VAE's shared mask buffer)
            v = v.clone()
        seen.add(v.data_ptr())
        tensors[k] = v
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    tmp.replace(directory / WEIGHTS)
    if text_encoder is not None:
        text_encoder.save(directory / TEXT_DIR)
    meta = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(), **(extra or {})}
    tmp = directory / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(directory / CONFIG)
    return directory


def read_model_config(directory: str | os.PathLike) -> ModelConfig:
    directory = Path(directory)
    p = directory / CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"{directory} is not an NSARM checkpoint: {CONFIG} is missing")
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p} is not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{p}: version {meta.get('version')!r} is not supported (expected {VERSION})")
    return ModelConfig.from_dict(meta["config"])


def load_checkpoint(
    directory: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> NSARMModel:
    """Read a directory written by `save_checkpoint` (its config.json decides the architecture)."""
    cfg = read_model_config(directory)
    sd = read_state_dict(Path(directory) / WEIGHTS)
    with_tok = any(k.startswith("tokenizer.") for k in sd)
    with torch.device("meta"):
        model = NSARMModel(cfg, with_tokenizer=with_tok)
    load_into(model, sd, str(Path(directory) / WEIGHTS))
    return _finish(model, device, dtype).eval()


def text_encoder_dir(directory: str | os.PathLike) -> Path | None:
    """The text encoder saved beside a checkpoint (tiny models), or None."""
    p = Path(directory) / TEXT_DIR
    return p if (p / "config.json").is_file() else None

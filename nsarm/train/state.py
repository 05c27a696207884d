"""Training state ↔ checkpoint directory: model + optimiser + scheduler + step + data position + RNG + configs.

A training checkpoint is a directory (Ray Train persists it to `RunConfig(storage_path)`; the local context keeps
it in a folder):
    train_state.pt   torch.save of {"step", "data", "rng": [per rank], "optimizer", "scheduler", "model" (DDP),
                     "train_config", "model_config", "world_size", "format", "version"}
    model/           (FSDP only) torch.distributed.checkpoint shards of model + optimiser, one file per rank
Everything is read back with `torch.load(weights_only=True)`: plain tensors, numbers, strings, lists and dicts.

RNG: each rank has its own torch global state (dropout, drop-path) and its own `torch.Generator` (caption drop,
bit flips); rank 0 gathers all of them so one file restores every rank.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

STATE_FILE = "train_state.pt"
FORMAT, VERSION = "nsarm-train-state", 1


def rng_state(generator: torch.Generator) -> dict:
    """This process's RNG states (torch CPU [+ CUDA], numpy, python, the training generator) as tensors/lists."""
    np_state = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
           "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
           "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]), 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng(generator: torch.Generator, world_size: int) -> list[dict]:
    """RNG states of every rank (collective when distributed; call on all ranks)."""
    return gather(rng_state(generator), world_size)


def gather(mine, world_size: int) -> list:
    """One picklable object per rank, in rank order (collective when distributed; call on all ranks)."""
    if world_size == 1 or not dist.is_initialized():
        return [mine]
    out: list = [None] * world_size
    dist.all_gather_object(out, mine)
    return out


def save_state(directory: Path, *, step: int, data: dict, rng: list[dict], optimizer: dict | None,
               scheduler: dict, model: dict | None, train_config: dict, model_config: dict, world_size: int) -> Path:
    """Write train_state.pt into `directory` (temp name + rename). `model`/`optimizer` None: they are in model/."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "step": step, "data": data, "rng": rng, "optimizer": optimizer,
               "scheduler": scheduler, "model": model, "train_config": train_config, "model_config": model_config,
               "world_size": world_size}
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(directory / STATE_FILE)
    return directory / STATE_FILE


def load_state(directory: Path) -> dict:
    p = Path(directory) / STATE_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{directory} is not a training checkpoint: {STATE_FILE} is missing")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise ValueError(f"{p}: format {state.get('format')!r} v{state.get('version')} is not {FORMAT} v{VERSION}")
    return state

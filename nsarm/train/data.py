"""Training batches from a dataset root (docs/DESIGN.md §3): HR + LR + caption, split by rank, with a resumable position.

Letters: B micro batch, H×W the HR size of the model (256² tiny, 1024² NSARM-8B), h×w = H/4 × W/4 the LR size.

    versions = pick_versions(root, deg_hash=None, cap_hash=None)      # the LR / caption versions to train on
    stream = BatchStream(root, versions, rank, world, micro_batch=2, hr_size=256, lr_size=64, seed=0)
    stream.load_state_dict(ckpt["data"])                              # resume: same epoch, same position
    batch = next(stream)      # Batch(hr_B3HW, lr_B3hw in [0, 1], captions, keys); stream.state_dict() after it

`dataset.reader.DatasetReader` owns the order (a pure function of seed and epoch) and the rank split; this module
only keeps the position as (epoch, consumed samples of this rank) and turns samples into tensors. A partial last
micro batch of an epoch is dropped (every rank steps in lockstep under DDP), and the next epoch starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import fsspec
import numpy as np
import torch

from dataset import contract
from dataset.reader import DatasetReader


@dataclass(frozen=True)
class Versions:
    deg_hash: str  # LR version ({root}/lr/{deg_hash})
    cap_hash: str | None  # caption version ({root}/captions/{cap_hash}); None = empty captions


@dataclass
class Batch:
    hr_B3HW: torch.Tensor  # float [0, 1]
    lr_B3hw: torch.Tensor  # float [0, 1]
    captions: list[str]
    keys: list[str]


def _subdirs(url: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p))


def pick_versions(root: str, deg_hash: str | None = None, cap_hash: str | None = None) -> Versions:
    """Resolve the LR and caption versions to train on.

    With no hash given, the dataset must hold exactly one LR version (and at most one caption version); several
    is an error naming them, because silently training on one of them would hide the choice.
    """
    root = root.rstrip("/")
    if not contract.list_shards(root, "hr"):
        raise FileNotFoundError(f"dataset root {root}: no done HR shards (run build-dataset first)")
    lrs = _subdirs(contract.join(root, "lr"))
    if deg_hash is None:
        if len(lrs) != 1:
            raise ValueError(f"dataset root {root}: {len(lrs)} LR versions {lrs} under lr/; set deg_hash "
                             f"(TrainConfig.deg_hash) to one of them" if lrs else
                             f"dataset root {root}: no LR version under lr/ (run the degrade stage)")
        deg_hash = lrs[0]
    elif deg_hash not in lrs:
        raise FileNotFoundError(f"dataset root {root}: LR version {deg_hash!r} not found; have {lrs}")
    caps = _subdirs(contract.join(root, "captions"))
    if cap_hash is None:
        if len(caps) > 1:
            raise ValueError(f"dataset root {root}: {len(caps)} caption versions {caps}; set cap_hash")
        cap_hash = caps[0] if caps else None
    elif cap_hash not in caps:
        raise FileNotFoundError(f"dataset root {root}: caption version {cap_hash!r} not found; have {caps}")
    return Versions(deg_hash, cap_hash)


def to_tensor(img_HW3: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (h, w, 3) → float (3, size, size) in [0, 1]; resized (PIL bicubic) when its size differs.

    The dataset stores HR 1024² and LR 256²; the tiny preset trains at 256² / 64², so a tiny run on a full-size
    dataset resizes here (both by the same factor, keeping the ×4 relation).
    """
    if img_HW3.ndim != 3 or img_HW3.shape[2] != 3 or img_HW3.dtype != np.uint8:
        raise ValueError(f"expected an (h, w, 3) uint8 image, got {img_HW3.shape} {img_HW3.dtype}")
    if img_HW3.shape[:2] != (size, size):
        from PIL import Image

        img_HW3 = np.asarray(Image.fromarray(img_HW3).resize((size, size), Image.BICUBIC))
    return torch.from_numpy(np.array(img_HW3)).permute(2, 0, 1).float() / 255


def holdout_keys(root: str, n: int) -> frozenset[str]:
    """The evaluation split: the last `n` samples (tar order) of the last done HR shard. Training skips them and the
    flow's evaluate step scores exactly them, so both agree without writing a split file."""
    if n <= 0:
        return frozenset()
    from dataset.reader import load_index

    index = load_index(root.rstrip("/"))
    keys = index[-1].keys
    if len(keys) <= n:
        raise ValueError(f"dataset root {root}: the last shard has {len(keys)} samples, cannot hold out {n}")
    return frozenset(keys[-n:])


class BatchStream:
    """Endless micro batches of one rank; position = (epoch, consumed samples this epoch).

    `exclude`: keys never trained on (the held-out split); they still count as consumed reader positions.
    """

    def __init__(self, root: str, versions: Versions, rank: int, world_size: int, micro_batch: int, hr_size: int,
                 lr_size: int, seed: int = 0, block_size: int = 256, exclude: frozenset[str] = frozenset()):
        self.reader = DatasetReader(root, deg_hash=versions.deg_hash, cap_hash=versions.cap_hash, rank=rank,
                                    world_size=world_size, seed=seed, shuffle=True, block_size=block_size,
                                    batch_size=micro_batch, drop_last=True)
        self.micro_batch, self.hr_size, self.lr_size = micro_batch, hr_size, lr_size
        self.exclude = exclude
        if len(self.reader) - len(exclude) < micro_batch:
            raise ValueError(f"dataset {root} gives rank {rank}/{world_size} {len(self.reader)} samples per epoch, "
                             f"fewer than one micro batch of {micro_batch}")
        self.epoch, self.consumed = 0, 0
        self._it = None

    @property
    def num_samples(self) -> int:
        return self.reader.num_samples

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.reader.seed,
                "num_samples": self.reader.num_samples, "world_size": self.reader.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size", self.reader.world_size) != self.reader.world_size:
            raise ValueError(f"data position was saved with {state['world_size']} workers, this run has "
                             f"{self.reader.world_size}; resume with the same num_workers")
        self.reader.load_state_dict({**state, "consumed": 0})  # validates seed / dataset size
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._it = None

    def _open(self) -> None:
        self.reader.set_epoch(self.epoch)
        self.reader.consumed = self.consumed  # the reader starts this many samples into the rank's range
        self._it = iter(self.reader)

    def __iter__(self) -> BatchStream:
        return self

    def _next_sample(self) -> dict | None:
        """The next trainable sample of this epoch, or None at its end (position advances past held-out keys)."""
        while self.consumed < len(self.reader):
            if self._it is None:
                self._open()
            s = next(self._it)
            self.consumed += 1
            if s["key"] not in self.exclude:
                return s
        return None

    def __next__(self) -> Batch:
        for _ in range(3):  # an epoch whose tail is shorter than a batch is cut; the batch starts the next one
            start = (self.epoch, self.consumed)
            samples = []
            while len(samples) < self.micro_batch and (s := self._next_sample()) is not None:
                samples.append(s)
            if len(samples) == self.micro_batch:
                break
            self.epoch, self.consumed, self._it = self.epoch + 1, 0, None
        else:
            raise RuntimeError(f"no full batch of {self.micro_batch} in 3 epochs from {start}")
        return Batch(
            hr_B3HW=torch.stack([to_tensor(s["hr"], self.hr_size) for s in samples]),
            lr_B3hw=torch.stack([to_tensor(s["lr"], self.lr_size) for s in samples]),
            captions=[s.get("caption") or "" for s in samples],
            keys=[s["key"] for s in samples],
        )


def hr_images(root: str, keys: frozenset[str] | None = None, exclude: frozenset[str] = frozenset(),
              seed: int = 0) -> dict[str, torch.Tensor]:
    """{key: (3, 256, 256) float in [-1, 1]} of the dataset's HR images, one epoch in `seed`'s order: `keys` only
    (None = all), minus `exclude` (the tokenizer warm-up and its ceiling read the tiny model's HR size)."""
    stream = BatchStream(root, pick_versions(root), 0, 1, 1, 256, 64, seed=seed, exclude=exclude)
    out = {}
    for _ in range(stream.num_samples - len(exclude)):  # one epoch
        batch = next(stream)
        if keys is None or batch.keys[0] in keys:
            out[batch.keys[0]] = batch.hr_B3HW[0] * 2 - 1
    return out


def dataset_version(root: str) -> str:
    """The manifest's content version, else a hash of the root URL (a dataset without manifest)."""
    url = contract.manifest_path(root)
    if contract.exists(url):
        return str(contract.read_json(url).get("version"))
    return hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:12]


def dataset_label(root: str) -> str:
    """`name@version (root)` of a dataset root, for the model version's page."""
    url = contract.manifest_path(root)
    manifest = contract.read_json(url) if contract.exists(url) else {}
    return f"{manifest.get('name', 'dataset')}@{manifest.get('version', dataset_version(root))} ({root})"

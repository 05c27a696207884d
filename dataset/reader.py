"""Read a dataset root as joined training samples: HR image + LR image (a degradation version) + caption (a
captioning version) + metadata, split over Ray Train ranks and DataLoader workers, shuffled per epoch, resumable.

    reader = DatasetReader(root, deg_hash="3f2a…", cap_hash="9c1d…", rank=r, world_size=w, batch_size=8)
    reader = DatasetReader.from_manifest(root, batch_size=8)   # the complete LR/caption versions of manifest.json
    loader = torch.utils.data.DataLoader(reader, batch_size=8, num_workers=2, collate_fn=collate_samples)
    reader.set_epoch(e); ...; ckpt["data"] = reader.state_dict(consumed=steps_this_epoch * 8)
    reader.load_state_dict(ckpt["data"])      # resume: neither repeats nor skips a sample

The epoch order is a pure function of (seed, epoch): shard order is permuted, and inside each shard the samples
are permuted within consecutive blocks of `block_size` (tars are streamed, so a block is all we hold in memory;
this is WebDataset's shard shuffle + buffer shuffle, made deterministic). The epoch sequence is cut into
`world_size` contiguous ranges (equal with `drop_last`), so a rank reads ~1/world of the shards. Inside a rank,
batch j goes to DataLoader worker j % num_workers, which is the order a DataLoader hands batches out; so the
samples a rank has consumed are always a prefix of its range and the position is one number, `consumed`.
Samples are dicts: key, shard, hr (H, W, 3) uint8 (or JPEG bytes with decode=False), meta (dict), and when
asked lr (h, w, 3) uint8, lr_meta (sampled degradation parameters), caption (str). A DataLoader needs
`collate_fn=collate_samples`: PyTorch's default collate recurses into the per-sample dicts (`meta`, `lr_meta`),
whose keys and list lengths differ between samples, and fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dataset import contract
from dataset.images import decode_rgb


@dataclass(frozen=True)
class ShardKeys:
    shard: int
    keys: tuple[str, ...]  # samples of the HR tar, in tar order


def load_index(root: str, deg_hash: str | None = None, cap_hash: str | None = None) -> list[ShardKeys]:
    """Done HR shards and their sample keys (from the parquet rows with status success).

    Raises:
        FileNotFoundError: no done shard, or an LR/caption shard missing for a requested version.
    """
    shards = contract.list_shards(root, "hr")
    if not shards:
        raise FileNotFoundError(f"{root}: no done HR shards ({contract.join(root, 'hr')}/*_stats.json)")
    index = []
    for s in shards:
        t = contract.read_parquet(contract.hr_parquet(root, s), columns=["key", "status"]).to_pydict()
        keys = tuple(k for k, st in zip(t["key"], t["status"], strict=True) if st == "success")
        if deg_hash and not contract.exists(contract.lr_stats(root, deg_hash, s)):
            raise FileNotFoundError(f"{root}: LR shard {s:06d} of degradation {deg_hash} is not done "
                                    f"({contract.lr_stats(root, deg_hash, s)} missing); run the degrade stage")
        if cap_hash and not contract.exists(contract.caption_parquet(root, cap_hash, s)):
            raise FileNotFoundError(f"{root}: captions of shard {s:06d} for {cap_hash} missing "
                                    f"({contract.caption_parquet(root, cap_hash, s)}); run the caption stage")
        index.append(ShardKeys(s, keys))
    return index


# sample fields stacked into one tensor per batch; the rest become lists
_STACKED = ("hr", "lr")


def collate_samples(samples: list[dict]) -> dict:
    """DataLoader `collate_fn` for DatasetReader samples: `hr` (B, H, W, 3) and `lr` (B, h, w, 3) uint8 tensors
    (lists when not decoded, or when sizes differ), every other field a list of length B (key, shard, caption,
    and the per-sample dicts meta / lr_meta as they are)."""
    batch: dict = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if name in _STACKED and all(isinstance(v, np.ndarray) and v.shape == values[0].shape for v in values):
            batch[name] = torch.from_numpy(np.stack(values))
        else:
            batch[name] = values
    return batch


def complete_versions(root: str) -> tuple[str | None, str | None]:
    """(deg_hash, cap_hash) of the LR and caption versions that cover every shard in `{root}/manifest.json`;
    None where there is none.

    Raises:
        ValueError: several complete versions of one kind (pass the one you want explicitly).
    """
    manifest = contract.read_json(contract.manifest_path(root))
    picked = []
    for kind in ("lr", "captions"):
        done = sorted(h for h, v in manifest.get(kind, {}).items() if v.get("complete"))
        if len(done) > 1:
            raise ValueError(f"{root}: {len(done)} complete {kind} versions {done}; pass the one to read")
        picked.append(done[0] if done else None)
    return picked[0], picked[1]


def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class DatasetReader(torch.utils.data.IterableDataset):
    """Joined, sharded, deterministically shuffled, resumable samples of a dataset root (see module docstring).

    Args:
        root: dataset root (local or s3://).
        deg_hash: LR version to join (`{root}/lr/{deg_hash}/`), or None for HR only.
        cap_hash: caption version to join (`{root}/captions/{cap_hash}/`), or None.
        rank, world_size: this process's Ray Train rank (default: torch.distributed, else 0 of 1).
        seed: shuffle seed; the order of epoch e depends only on (seed, e).
        shuffle: False keeps shard and tar order (evaluation).
        block_size: samples permuted together inside a shard (memory: one block of encoded images).
        batch_size: the DataLoader batch size (worker split is per batch, see module docstring).
        drop_last: give every rank exactly floor(N / world_size) samples (DDP needs equal step counts).
        decode: decode images to uint8 arrays (else JPEG/PNG bytes).
    """

    def __init__(self, root: str, deg_hash: str | None = None, cap_hash: str | None = None, rank: int | None = None,
                 world_size: int | None = None, seed: int = 0, shuffle: bool = True, block_size: int = 256,
                 batch_size: int = 1, drop_last: bool = False, decode: bool = True):
        super().__init__()
        self.root, self.deg_hash, self.cap_hash = root.rstrip("/"), deg_hash, cap_hash
        r, w = _default_rank_world()
        self.rank, self.world_size = (r if rank is None else rank), (w if world_size is None else world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"DatasetReader: rank {self.rank} not in [0, {self.world_size})")
        self.seed, self.shuffle, self.block_size, self.batch_size = seed, shuffle, block_size, batch_size
        self.drop_last, self.decode = drop_last, decode
        self.index = load_index(self.root, deg_hash, cap_hash)
        self.num_samples = sum(len(s.keys) for s in self.index)
        self.epoch, self.consumed = 0, 0

    @classmethod
    def from_manifest(cls, root: str, **kwargs) -> DatasetReader:
        """A reader joining HR with the complete LR and caption versions recorded in `{root}/manifest.json`."""
        deg_hash, cap_hash = complete_versions(root)
        return cls(root, deg_hash=deg_hash, cap_hash=cap_hash, **kwargs)

    # -- position
    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.consumed = epoch, 0

    def state_dict(self, consumed: int | None = None) -> dict:
        """The data position; pass `consumed` (samples this rank has trained on this epoch) when iterating
        through DataLoader workers, whose progress the main process does not see."""
        return {"epoch": self.epoch, "consumed": self.consumed if consumed is None else consumed, "seed": self.seed,
                "num_samples": self.num_samples, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("num_samples", self.num_samples) != self.num_samples:
            raise ValueError(f"DatasetReader: state {state} is for another dataset or seed "
                             f"(this one: seed {self.seed}, {self.num_samples} samples)")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def rank_range(self) -> tuple[int, int]:
        """[start, end) of this rank in the epoch sequence."""
        n, w = self.num_samples, self.world_size
        if self.drop_last:
            per = n // w
            return self.rank * per, (self.rank + 1) * per
        return self.rank * n // w, (self.rank + 1) * n // w

    def __len__(self) -> int:
        start, end = self.rank_range()
        return end - start

    # -- order
    def epoch_order(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """[(index position of shard, tar indices in the order they are visited)] for the whole epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        shard_order = rng.permutation(len(self.index)) if self.shuffle else np.arange(len(self.index))
        order = []
        for si in shard_order:
            n = len(self.index[si].keys)
            idx = np.arange(n)
            if self.shuffle:
                for b in range(0, n, self.block_size):
                    idx[b:b + self.block_size] = b + rng.permutation(min(self.block_size, n - b))
            order.append((int(si), idx))
        return order

    # -- iteration
    def _wanted_positions(self) -> tuple[int, int, int, int]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        start, end = self.rank_range()
        return start, end, wid, nw

    def __iter__(self) -> Iterator[dict]:
        start, end, wid, nw = self._wanted_positions()
        first = start + self.consumed
        pos = 0  # global position of the first sample of the current shard
        for si, order in self.epoch_order(self.epoch):
            lo, hi = max(first, pos), min(end, pos + len(order))
            if lo < hi:
                # positions q in [lo, hi) of this shard that belong to this worker: batch (q - first) // bs
                wanted = {int(order[q - pos]): q for q in range(lo, hi)
                          if ((q - first) // self.batch_size) % nw == wid}
                for sample in self._read_shard(si, order, wanted) if wanted else ():
                    if nw == 1:  # in-process iteration: keep the position live (a break leaves it exact)
                        self.consumed += 1
                    yield sample
            pos += len(order)
            if pos >= end:
                break

    def _read_shard(self, si: int, order: np.ndarray, wanted: dict[int, int]) -> Iterator[dict]:
        shard = self.index[si].shard
        keys = self.index[si].keys
        hr = contract.iter_tar_samples(contract.hr_tar(self.root, shard))
        lr = contract.iter_tar_samples(contract.lr_tar(self.root, self.deg_hash, shard)) if self.deg_hash else None
        captions = self._captions(shard) if self.cap_hash else {}
        last = max(wanted)  # tar index after which nothing more is needed from this shard
        block: dict[int, dict] = {}
        for b in range(0, len(order), self.block_size):
            block.clear()
            for t in range(b, min(b + self.block_size, len(order))):
                if t > last:
                    break
                key, files, err = next(hr)
                if err or key != keys[t]:
                    raise ValueError(f"{contract.hr_tar(self.root, shard)}: member {key!r} at {t}, parquet says "
                                     f"{keys[t]!r} ({err or 'out of order'})")
                lr_files = None
                if lr is not None:
                    lkey, lr_files, lerr = next(lr)
                    if lerr or lkey != key:
                        raise ValueError(f"{contract.lr_tar(self.root, self.deg_hash, shard)}: key {lkey!r} where "
                                         f"the HR tar has {key!r} (LR tars must follow HR order, docs/DESIGN.md §3)")
                if t in wanted:
                    block[t] = self._sample(shard, key, files, lr_files, captions)
            # yield in visiting order (the block's permutation), which is also increasing global position
            for t in order[b:b + self.block_size]:
                if int(t) in block:
                    yield block[int(t)]
            if b + self.block_size > last:
                return

    def _captions(self, shard: int) -> dict[str, str]:
        t = contract.read_parquet(contract.caption_parquet(self.root, self.cap_hash, shard),
                                  columns=["key", "caption"]).to_pydict()
        return dict(zip(t["key"], t["caption"], strict=True))

    def _sample(self, shard: int, key: str, files: dict, lr_files: dict | None, captions: dict) -> dict:
        hr = files["jpg"]
        sample = {"key": key, "shard": shard, "hr": decode_rgb(hr) if self.decode else hr,
                  "meta": json.loads(files["json"]) if "json" in files else {}}
        if lr_files is not None:
            lr = lr_files["png"]
            sample["lr"] = decode_rgb(lr) if self.decode else lr
            sample["lr_meta"] = json.loads(lr_files["deg.json"]) if "deg.json" in lr_files else {}
        if self.cap_hash:
            sample["caption"] = captions.get(key) or ""
        return sample

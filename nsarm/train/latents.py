"""On-disk cache of frozen-tokenizer latents: each (HR, LR) pair is encoded once per tokenizer, not once per epoch.

Both training stages keep the tokenizer frozen and read images without random augmentation, so the raw latents
z_hr (d, H, W) and z_lr (d, n, n) of a sample never change. On CPU the encoder is most of a tiny step's cost.

    cache = LatentCache("/tmp/latents", tokenizer, dataset_id="bicubic-x4-noise")
    z_hr_BdHW, z_lr_Bdnn = cache.encode(tokenizer, batch)        # hits read files, misses encode and write

Files: {dir}/{tokenizer fingerprint}/{dataset_id}/{key}.safetensors, written to a temp name and renamed (several
Ray workers may share the folder). The fingerprint hashes the tokenizer's weights and config, so a cache is never
read with another tokenizer. Disabled (dir None) → plain `encode_pair`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from nsarm.train.steps import encode_pair


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(json.dumps(tokenizer.cfg.to_dict(), sort_keys=True).encode())
    for k, v in sorted(tokenizer.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class LatentCache:
    def __init__(self, directory: str | Path | None, tokenizer, dataset_id: str):
        self.dir = Path(directory) / tokenizer_fingerprint(tokenizer) / dataset_id if directory else None
        self.hits = self.misses = 0

    def _path(self, key: str, hr_size: int) -> Path:
        return self.dir / f"{key}-{hr_size}.safetensors"

    def encode(self, tokenizer, batch) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(tokenizer.parameters()).device
        if self.dir is None:
            return encode_pair(tokenizer, batch.hr_B3HW.to(device), batch.lr_B3hw.to(device))
        from safetensors.torch import load_file, save_file

        hr_size = batch.hr_B3HW.shape[-1]
        found = {}
        for i, key in enumerate(batch.keys):
            p = self._path(key, hr_size)
            if p.is_file():
                found[i] = load_file(str(p))
        todo = [i for i in range(len(batch.keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(todo)
        if todo:
            z_hr, z_lr = encode_pair(tokenizer, batch.hr_B3HW[todo].to(device), batch.lr_B3hw[todo].to(device))
            self.dir.mkdir(parents=True, exist_ok=True)
            for j, i in enumerate(todo):
                found[i] = {"hr": z_hr[j].cpu().contiguous(), "lr": z_lr[j].cpu().contiguous()}
                p = self._path(batch.keys[i], hr_size)
                tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
                save_file(found[i], str(tmp))
                tmp.replace(p)
        z_hr = torch.stack([found[i]["hr"] for i in range(len(batch.keys))]).to(device)
        z_lr = torch.stack([found[i]["lr"] for i in range(len(batch.keys))]).to(device)
        return z_hr, z_lr

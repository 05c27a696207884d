"""`{root}/manifest.json`: what a dataset root holds — shards, counts, config hashes, a content version.

Written after the shard/degrade/caption stages (the flow's register step) and logged to MLflow as an artifact.
The version is derived from the content (each done shard's tar sha256 and the stage config hashes) unless given,
so the same bytes always get the same version and any rebuilt shard gets a new one.
"""

from __future__ import annotations

import hashlib
import json
import time

import fsspec

from dataset import contract

MANIFEST_FORMAT = 1


def _sub_dirs(root: str, sub: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(contract.join(root, sub))
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p))


def _caption_shards(root: str, cap_hash: str) -> list[int]:
    fs, path = fsspec.core.url_to_fs(contract.caption_dir(root, cap_hash))
    names = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    return sorted(int(n[:6]) for n in names if len(n) == 14 and n.endswith(".parquet") and n[:6].isdigit())


def _sum_stats(stats: list[dict], keys: tuple[str, ...]) -> dict[str, int]:
    return {k: sum(int(s.get(k) or 0) for s in stats) for k in keys}


def build_manifest(root: str, name: str = "nsarm-dataset", version: str | None = None, extra: dict | None = None,
                   ) -> dict:
    """The manifest dict of `root` (nothing written). Raises FileNotFoundError when no HR shard is done."""
    root = root.rstrip("/")
    shards = contract.list_shards(root, "hr")
    if not shards:
        raise FileNotFoundError(f"{root}: no done HR shards; run the shard stage first")
    hr_stats = [contract.read_json(contract.hr_stats(root, s)) for s in shards]
    hr_cfg_url = contract.join(root, "hr", "config.json")
    hr_cfg = contract.read_json(hr_cfg_url) if contract.exists(hr_cfg_url) else {}
    src_url = contract.join(root, "hr", "source.json")
    hr = {
        "config_hash": hr_cfg.get("config_hash"), "config": hr_cfg.get("config"),
        "source": contract.read_json(src_url) if contract.exists(src_url) else None,
        "shards": shards,
        "counts": _sum_stats(hr_stats, ("count", "successes", "failed_to_download", "failed_to_process",
                                        "duplicates", "tar_bytes")),
        "samples": sum(s["samples_in_tar"] for s in hr_stats),
        "tar_sha256": {f"{s:06d}": st["tar_sha256"] for s, st in zip(shards, hr_stats, strict=True)},
    }
    lr = {}
    for deg in _sub_dirs(root, "lr"):
        lr_shards = contract.list_shards(root, f"lr/{deg}")
        cfg_url = contract.join(contract.lr_dir(root, deg), "config.json")
        lr[deg] = {"shards": lr_shards, "complete": set(lr_shards) >= set(shards),
                   "config": contract.read_json(cfg_url) if contract.exists(cfg_url) else None}
    captions = {}
    for cap in _sub_dirs(root, "captions"):
        cap_shards = _caption_shards(root, cap)
        cfg_url = contract.join(contract.caption_dir(root, cap), "config.json")
        captions[cap] = {"shards": cap_shards, "complete": set(cap_shards) >= set(shards),
                         "config": contract.read_json(cfg_url) if contract.exists(cfg_url) else None}
    content = json.dumps({"hr": hr["tar_sha256"], "hr_cfg": hr["config_hash"], "lr": sorted(lr),
                          "captions": sorted(captions)}, sort_keys=True)
    return {
        "format": MANIFEST_FORMAT, "name": name,
        "version": version or hashlib.sha256(content.encode()).hexdigest()[:12],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "root": root,
        "num_samples": hr["samples"], "num_shards": len(shards),
        "hr": hr, "lr": lr, "captions": captions, **({"extra": extra} if extra else {}),
    }


def write_manifest(root: str, name: str = "nsarm-dataset", version: str | None = None, extra: dict | None = None,
                   ) -> dict:
    """Build the manifest of `root` and write it atomically to `{root}/manifest.json`; returns it."""
    manifest = build_manifest(root, name, version, extra)
    contract.write_json_atomic(contract.manifest_path(root), manifest)
    return manifest

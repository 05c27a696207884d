"""Export a trained model: our consolidated format (what `nsarm upscale` loads) + the official key layout + sha256.

    info = export_model(model, "s3://bucket/runs/tiny/export/stage2", text_encoder=enc)
    # info = {"uri": ".../stage2", "sha256": <model.safetensors>, "official": ".../nsarm_official.pth", ...}

Layout of an export directory (local path or s3:// prefix):
    model.safetensors, config.json, [text_encoder/]     nsarm.checkpoints.save_checkpoint (our format)
    nsarm_official.pth                                  transformer keys at top level + map_transformer.* (NSARM.pth)
    export.json                                         uri, sha256 of both weight files, step, train config
Exports are write-once: export.json is written last, and a directory that has one is never written again
(`export_model` returns its recorded info); a new export needs a new path (ray_trainer names it after the step and
the training config). The registry stores the URI and the sha256 of every file a load reads (`loadable_files`),
never the bytes (peers-and-anchors §E.4); `fetch_export` re-hashes them at load (a local copy for s3:// exports).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import fsspec
import torch

OFFICIAL_FILE = "nsarm_official.pth"
INFO_FILE = "export.json"


class ExportError(ValueError):
    """An export file that a registered version needs is missing or no longer has its recorded sha256."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with fsspec.open(str(path), "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def export_model(model, uri: str, text_encoder=None, extra: dict | None = None) -> dict:
    """Write `model` (NSARMModel with tokenizer) to `uri`; returns the info dict also written as export.json."""
    from nsarm.checkpoints import WEIGHTS, save_checkpoint

    if model.tokenizer is None:
        raise ValueError("export_model: the model has no tokenizer; `nsarm upscale` needs one")
    uri = uri.rstrip("/")
    if _exists(f"{uri}/{INFO_FILE}"):  # write-once: a registered version may point at these bytes
        return read_export_info(uri)
    with tempfile.TemporaryDirectory(prefix="nsarm-export-") as tmp:
        local = Path(uri.removeprefix("file://")) if not _is_remote(uri) else Path(tmp) / "export"
        save_checkpoint(model, local, text_encoder=text_encoder if _saves_text(model) else None, extra=extra)
        official = {k: v.detach().cpu().contiguous() for k, v in model.official_state_dict().items()}
        torch.save(official, local / (OFFICIAL_FILE + ".tmp"))
        (local / (OFFICIAL_FILE + ".tmp")).replace(local / OFFICIAL_FILE)
        info = {"uri": uri, "sha256": sha256_file(local / WEIGHTS), "weights": WEIGHTS,
                "official": f"{uri}/{OFFICIAL_FILE}", "official_sha256": sha256_file(local / OFFICIAL_FILE),
                "model": model.cfg.name, **(extra or {})}
        text = json.dumps(info, indent=2, default=str)
        if _is_remote(uri):
            fs, path = fsspec.core.url_to_fs(uri)
            fs.put(str(local) + "/", path, recursive=True)
            fs.pipe_file(f"{path}/{INFO_FILE}", text.encode())  # last: its presence marks a complete export
        else:
            (local / (INFO_FILE + ".tmp")).write_text(text)
            (local / (INFO_FILE + ".tmp")).replace(local / INFO_FILE)
    return info


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()  # another process (a Ray worker) may have written it since this one last looked
    return fs.exists(path)


def _saves_text(model) -> bool:
    # the tiny T5 is part of a tiny model (seeded, not downloadable); flan-t5-xl is loaded from the user's own copy
    return model.cfg.text_encoder == "tiny-t5"


def read_export_info(uri: str) -> dict:
    """export.json of an export directory (local or s3://)."""
    with fsspec.open(f"{uri.rstrip('/')}/{INFO_FILE}", "r") as f:
        return json.load(f)


def verify_export(uri: str) -> dict:
    """Re-hash the exported weights; raises ValueError when they no longer match export.json."""
    info = read_export_info(uri)
    actual = sha256_file(f"{uri.rstrip('/')}/{info['weights']}")
    if actual != info["sha256"]:
        raise ValueError(f"{uri}: {info['weights']} sha256 {actual} != recorded {info['sha256']} (file changed)")
    return info


def loadable_files(uri: str) -> dict[str, str]:
    """{relative path: sha256} of the files a load of the export reads: the weights (tokenizer included), config.json
    and a saved text encoder; not the official-layout copy nor export.json."""
    from nsarm.checkpoints import CONFIG, TEXT_DIR, WEIGHTS

    fs, root = fsspec.core.url_to_fs(uri.rstrip("/"))
    fs.invalidate_cache()
    rels = [WEIGHTS, CONFIG]
    if fs.exists(f"{root}/{TEXT_DIR}"):
        rels += sorted(p[len(root) + 1:] for p in fs.find(f"{root}/{TEXT_DIR}"))
    return {rel: sha256_file(f"{uri.rstrip('/')}/{rel}") for rel in rels}


def fetch_export(uri: str, files: dict[str, str], cache: str | Path) -> Path:
    """A local directory holding the export `uri`'s `files` ({relative path: sha256}), each checked against its sha256.

    A local export is checked in place; an s3:// (any fsspec URL) export is copied under `cache` first (a verified
    copy is reused). Raises ExportError naming the file that is missing or whose bytes changed."""
    uri = uri.rstrip("/")
    local = Path(uri.removeprefix("file://")) if not _is_remote(uri) else \
        Path(cache) / hashlib.sha256(uri.encode()).hexdigest()[:16]
    for rel, sha in files.items():
        target = local / rel
        if _is_remote(uri) and not (target.is_file() and sha256_file(target) == sha):
            _download(f"{uri}/{rel}", target)
        if not target.is_file():
            raise ExportError(f"{uri}/{rel}: missing (the registered model needs this file)")
        actual = sha256_file(target)
        if actual != sha:
            raise ExportError(f"{uri}/{rel}: sha256 {actual} differs from the recorded {sha} (the file changed)")
    return local


def _download(url: str, target: Path) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return  # reported as missing by the caller
    target.parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(path, str(target) + ".part")
    Path(str(target) + ".part").replace(target)

"""The dataset file contract of docs/DESIGN.md §3, as path helpers and safe writers over fsspec (local dirs or s3://).

    {root}/hr/{shard:06d}.tar | .parquet | _stats.json      shard stage (dataset/)
    {root}/lr/{deg_hash}/{shard:06d}.tar (+ config.json)     degradation stage (degradation/)
    {root}/captions/{cap_hash}/{shard:06d}.parquet           captioning stage (captioning/)
    {root}/manifest.json

Every stage uses these helpers so the layout is written down once. `put_atomic` writes to a temporary name and
renames (a crash never leaves a file that looks complete); `*_stats.json` is written last and marks a shard done.
Derived stages record the HR tar's sha256 in their stats (`done_stats`): a rewritten HR shard makes them stale.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import uuid
from collections.abc import Iterator

import fsspec

SHARD_RE = re.compile(r"^(\d{6})\.tar$")


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def shard_name(shard: int) -> str:
    return f"{shard:06d}"


def hr_tar(root: str, shard: int) -> str:
    return join(root, "hr", f"{shard_name(shard)}.tar")


def hr_parquet(root: str, shard: int) -> str:
    return join(root, "hr", f"{shard_name(shard)}.parquet")


def hr_stats(root: str, shard: int) -> str:
    return join(root, "hr", f"{shard_name(shard)}_stats.json")


def lr_dir(root: str, deg_hash: str) -> str:
    return join(root, "lr", deg_hash)


def lr_tar(root: str, deg_hash: str, shard: int) -> str:
    return join(lr_dir(root, deg_hash), f"{shard_name(shard)}.tar")


def lr_stats(root: str, deg_hash: str, shard: int) -> str:
    return join(lr_dir(root, deg_hash), f"{shard_name(shard)}_stats.json")


def caption_dir(root: str, cap_hash: str) -> str:
    return join(root, "captions", cap_hash)


def caption_parquet(root: str, cap_hash: str, shard: int) -> str:
    return join(caption_dir(root, cap_hash), f"{shard_name(shard)}.parquet")


def caption_stats(root: str, cap_hash: str, shard: int) -> str:
    return join(caption_dir(root, cap_hash), f"{shard_name(shard)}_stats.json")


def manifest_path(root: str) -> str:
    return join(root, "manifest.json")


def fs_for(url: str) -> fsspec.AbstractFileSystem:
    fs, _ = fsspec.core.url_to_fs(url)
    return fs


def exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def remove(url: str) -> None:
    """Delete `url` if it exists."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path)


def put_atomic(url: str, data: bytes) -> None:
    """Write `data` to `url` via a temporary sibling and a rename (copy+delete on object stores, where a
    reader never sees a partial object anyway)."""
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def write_json_atomic(url: str, obj) -> None:
    put_atomic(url, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(url: str):
    with fsspec.open(url, "rb") as f:
        return json.loads(f.read())


def read_parquet(url: str, columns: list[str] | None = None):
    """The parquet file at `url` as a pyarrow Table (only `columns`, if given).

    The bytes are copied into an Arrow-owned buffer before Arrow parses them. Handing Arrow a Python file object (or
    Python bytes) makes it hold Python-owned buffers whose last reference can be dropped on one of Arrow's own I/O
    threads; when that happens while the interpreter exits, the thread cannot take the GIL, is unwound through a
    noexcept destructor and the process aborts ("terminate called without an active exception", exit 134) after all
    its work is done: issue #17, 6 of 120 runs of a 4-thread read loop here, 0 of 120 with the copy
    (tests/integration/dataset/test_cli_exit.py).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        data = f.read()
    buf = pa.allocate_buffer(len(data))
    memoryview(buf).cast("B")[:] = data
    return pq.read_table(pa.BufferReader(buf), columns=columns)


def hr_tar_sha256(root: str, shard: int) -> str | None:
    """The sha256 the shard stage recorded for `{root}/hr/{shard}.tar` (None when the HR shard is not done)."""
    url = hr_stats(root, shard)
    return read_json(url).get("tar_sha256") if exists(url) else None


def done_stats(stats_url: str, root: str, shard: int) -> dict | None:
    """A derived stage's (LR, captions) stats when its shard is done *for the HR tar as it is now*, else None.

    The LR and caption stages record the HR tar's sha256 in their stats. `--retry-failed` or cross-shard dedup
    rewrites an HR shard (new hash): the derived shard is then stale and must be redone, not skipped. Stats written
    before hashes were recorded (no `hr_tar_sha256`) count as done.
    """
    if not exists(stats_url):
        return None
    st = read_json(stats_url)
    recorded = st.get("hr_tar_sha256")
    return st if recorded is None or recorded == hr_tar_sha256(root, shard) else None


def list_shards(root: str, sub: str = "hr", done_only: bool = True) -> list[int]:
    """Shard ids under `{root}/{sub}`; with `done_only`, only those whose `_stats.json` exists (the done marker)."""
    fs, path = fsspec.core.url_to_fs(join(root, sub))
    if not fs.exists(path):
        return []
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    ids = sorted(int(m.group(1)) for n in names if (m := SHARD_RE.match(n)))
    if done_only:
        ids = [i for i in ids if f"{shard_name(i)}_stats.json" in names]
    return ids


def safe_member_key(name: str) -> tuple[str, str] | None:
    """Split a tar member name into (key, extension) as WebDataset does (key = up to the first dot of the base
    name). Returns None for names that must never be trusted: absolute paths, '..' parts, empty keys."""
    if name.startswith("/") or "\\" in name or any(part in ("", "..") for part in name.split("/")):
        return None
    base = name.rsplit("/", 1)[-1]
    key, dot, ext = base.partition(".")
    if not key or not dot:
        return None
    prefix = name[: len(name) - len(base)]
    return prefix + key, ext


def iter_tar_samples(url: str) -> Iterator[tuple[str, dict[str, bytes] | None, str | None]]:
    """Yield `(key, {ext: bytes}, None)` per sample of a WebDataset tar in member order, or `(name, None, error)`
    for a member that is rejected (unsafe path, not a regular file). Never extracts to disk; streams the tar
    (mode "r|"), so memory holds one sample, not the shard."""
    current_key, current = None, {}
    with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            split = safe_member_key(member.name)
            if split is None or not member.isfile():
                yield member.name, None, "unsafe or non-file tar member"
                continue
            key, ext = split
            if key != current_key and current_key is not None:
                yield current_key, current, None
                current = {}
            current_key = key
            current[ext] = tar.extractfile(member).read()
    if current_key is not None:
        yield current_key, current, None


def tar_bytes(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """Build an uncompressed WebDataset tar in memory from `[(key, {ext: bytes})]`, members in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, files in samples:
            for ext, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(payload), 0o644, 0
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()

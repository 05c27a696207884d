"""An s3:// root and s3:// folder source on a real moto server (in-process and on Ray), and kill -9 mid-shard
followed by a rerun of the same command: no lost and no duplicated sample."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from dataset import contract
from dataset.build import build_shards
from dataset.manifest import write_manifest
from dataset.reader import DatasetReader
from dataset.verify import verify_root

pytestmark = pytest.mark.integration


def test_s3_folder_source_and_root(s3_bucket, sample_photos, fast_cfg, ray_local):
    import fsspec

    fs = fsspec.filesystem("s3")
    for p in sample_photos[:5]:
        fs.put(str(p.path), f"{s3_bucket}/src/{p.path.name}")
    root = f"{s3_bucket}/ds"
    cfg = fast_cfg.override(shard_size=3)
    local = build_shards(f"{s3_bucket}/src", root, cfg, use_ray=False, shards=[0])
    assert local["shards_done"] == 1 and local["totals"]["successes"] == 3
    on_ray = build_shards(f"{s3_bucket}/src", root, cfg)  # workers reach moto through the forwarded AWS_* env
    assert on_ray["shards_skipped"] == 1 and on_ray["new_samples"] == 2 and on_ray["shards_failed"] == {}
    report = verify_root(root)
    assert report["problems"] == [] and report["samples"] == 5
    assert not [p for p in fs.ls(f"{root}/hr") if ".tmp-" in p]
    manifest = write_manifest(root)
    assert contract.read_json(f"{root}/manifest.json")["num_samples"] == manifest["num_samples"] == 5
    keys = [s["key"] for s in DatasetReader(root, seed=1, decode=False)]
    assert sorted(keys) == sorted(p.path.stem for p in sample_photos[:5])


def _shard_cmd(csv: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "nsarm.cli", "shard", str(csv), str(root), "--preset", "tiny",
            "--shard-size", "4", "--threads", "1", "--id-col", "id"]


def test_kill_mid_shard_then_rerun(hostile_server, sample_photos, tmp_path):
    photos = sample_photos[:12]
    csv = tmp_path / "urls.csv"
    pd.DataFrame({"url": [hostile_server.url(f"slow/{p.path.name}") for p in photos],
                  "id": [p.photo_id for p in photos]}).to_csv(csv, index=False)
    root = tmp_path / "ds"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_shard_cmd(csv, root), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (root / "hr" / "000000_stats.json").exists():  # shard 0 done …
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "shard 0 never finished"
            time.sleep(0.05)
        time.sleep(0.5)  # … and shard 1 (4 × 0.25 s of slow downloads) is in flight
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert contract.list_shards(str(root)) == [0]  # shard 1 was interrupted: not marked done …
    assert any(hostile_server.hits.get(f"slow/{p.path.name}") for p in photos[4:8])  # … after it had started
    hits_shard0 = {p.path.name: hostile_server.hits.get(f"slow/{p.path.name}", 0) for p in photos[:4]}
    rerun = subprocess.run(_shard_cmd(csv, root), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = verify_root(str(root))
    assert report["problems"] == []
    assert report["keys"] == [p.photo_id for p in photos]  # none lost, none repeated, source order
    assert {p.path.name: hostile_server.hits[f"slow/{p.path.name}"] for p in photos[:4]} == hits_shard0  # skipped
    assert not list((root / "hr").glob("*.tmp-*"))

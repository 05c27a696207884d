"""`nsarm shard` exits cleanly, every time: issue #17 saw 'terminate called without an active exception' (SIGABRT,
exit 134) in about 1 of 7 runs on a folder of 17 mixed good/bad images, after all output was written. Runs the
command repeatedly (two at a time, as a busy machine would) on 12 real photos + 5 hostile files and checks every
exit status, stderr, and that each run wrote its shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUNS = 8
BAD = ("zero.jpg", "truncated.jpg", "random.jpg", "one.png", "bomb.png")


@pytest.fixture(scope="module")
def mixed_folder(sample_photos, hostile_files_, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixed17")
    for p in sample_photos:
        (folder / p.path.name).write_bytes(p.path.read_bytes())
    files = dict(hostile_files_)
    for name in BAD:
        (folder / name).write_bytes(files[name])
    assert len(list(folder.iterdir())) == 17
    return folder


def _shard(folder: Path, root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    return subprocess.run([str(Path(sys.executable).parent / "nsarm"), "shard", str(folder), str(root),
                           "--preset", "tiny", "--shard-size", "6"], capture_output=True, text=True, env=env,
                          timeout=300)


def test_shard_exits_cleanly_every_run(mixed_folder, tmp_path):
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda i: _shard(mixed_folder, tmp_path / f"root{i}"), range(RUNS)))
    aborted = [(i, r.returncode, r.stderr[-300:]) for i, r in enumerate(runs)
               if r.returncode != 0 or "terminate called" in r.stderr]
    assert not aborted, f"{len(aborted)}/{RUNS} runs did not exit cleanly: {aborted}"
    for i, r in enumerate(runs):
        summary = json.loads(r.stdout)
        assert summary["shards_failed"] == {} and summary["totals"]["count"] == 17 and summary["samples"] >= 1
        assert summary["totals"]["failed_to_process"] >= len(BAD)
        assert len(list((tmp_path / f"root{i}" / "hr").glob("*_stats.json"))) == 3

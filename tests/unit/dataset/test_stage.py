"""One shard-stage shape (dataset/stage.py): a single ShardResult class in the tree, one summary schema that the
shard, degrade and caption stages all return, and the in-process retry loop they share."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from dataset.stage import ShardResult, StageSummary, run_in_process, summarize

REPO = Path(__file__).resolve().parents[3]
SOURCE_DIRS = ("nsarm", "dataset", "degradation", "captioning", "flows", "benchmarks")
SUMMARY_KEYS = {f.name for f in fields(StageSummary)}


def test_one_shard_result_class_in_the_tree():
    where = [f"{p.relative_to(REPO)}:{node.lineno}" for d in SOURCE_DIRS for p in sorted((REPO / d).rglob("*.py"))
             for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ClassDef)
             and node.name == "ShardResult"]
    assert len(where) == 1 and where[0].startswith("dataset/stage.py:"), where


def test_summary_counts_done_skipped_failed_and_merges_histograms():
    results = [
        ShardResult(True, 2, n=4, n_bad=1, stats={"too_long": 1, "errors": {"a": 1}}),
        ShardResult(True, 0, n=3, skipped=True, stats={"too_long": 2, "errors": {"a": 2, "b": 1}}),
        ShardResult(False, 1, err="OSError: disk full\nTraceback …"),
    ]
    s = summarize("caption", "/r", "captions/h", "h", results, 2.0, totals=("too_long", "errors"), actors=2)
    assert set(s) == SUMMARY_KEYS and StageSummary.from_dict(s).stage == "caption"
    assert (s["shards_total"], s["shards_done"], s["shards_skipped"]) == (3, 2, 1)
    assert s["shards_failed"] == {1: "OSError: disk full\nTraceback …"}  # the whole error: nothing lost
    assert (s["samples"], s["new_samples"], s["bad_samples"], s["samples_per_s"]) == (7, 4, 1, 2.0)
    assert s["totals"] == {"too_long": 3, "errors": {"a": 3, "b": 1}} and s["extra"] == {"actors": 2}


def test_a_renamed_or_missing_summary_key_is_refused():
    s = summarize("degrade", "/r", "lr/h", "h", [ShardResult(True, 0, n=1)], 1.0)
    s["n_ok"] = s.pop("samples")
    with pytest.raises(ValueError, match=r"stage 'degrade'.*missing \['samples'\], unknown \['n_ok'\]"):
        StageSummary.from_dict(s)


def test_run_in_process_retries_a_failed_shard_and_reports_each_once():
    calls, seen = [], []

    def worker(shard: int) -> ShardResult:
        calls.append(shard)
        return ShardResult(calls.count(shard) > 1 or shard == 0, shard, n=1, err=None if shard == 0 else "x")

    results = run_in_process([0, 1], worker, retries=2, progress=lambda r, d, t: seen.append((r.shard_id, d, t)))
    assert calls == [0, 1, 1] and [r.ok for r in results] == [True, True] and seen == [(0, 1, 2), (1, 2, 2)]


def test_the_three_stages_return_the_same_summary_keys(sample_photos, tiny_cfg, tmp_path, one_torch_thread):
    """Shard (build_shards in process), degrade (`nsarm degrade`) and caption (caption_shards) on real photos."""
    from captioning.config import CaptionConfig
    from captioning.tiny import photo_jpeg, write_hr_shard
    from captioning.worker import caption_shards
    from dataset.build import build_shards
    from nsarm.cli import main

    hr = build_shards(str(sample_photos[0].path.parent), str(tmp_path / "built"), tiny_cfg, limit=2, use_ray=False)
    root = str(tmp_path / "ds")
    write_hr_shard(root, 0, [(p.photo_id, photo_jpeg(p.path, 160), {"photo_description": p.path.stem} if i else {})
                             for i, p in enumerate(sample_photos[:2])])  # the first has no caption: a fallback
    cap = caption_shards(root, CaptionConfig(backend="metadata"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["degrade", root, "--preset", "realesrgan", "--batch-size", "2"]) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    lr = lines[-1]
    assert set(lines[0]) == {"ok", "shard_id", "n", "n_bad", "err", "skipped", "seconds"}  # one line per shard
    for s, stage, samples in ((hr, "shard", 2), (lr, "degrade", 2), (cap, "caption", 2)):
        assert set(s) == SUMMARY_KEYS, stage
        summary = StageSummary.from_dict(json.loads(json.dumps(s)))  # as stored in manifest.json
        assert (summary.stage, summary.shards_done, summary.samples, summary.shards_failed) == (stage, 1, samples, {})
    assert hr["output"] == "hr" and lr["output"] == f"lr/{lr['version']}" and cap["output"].startswith("captions/")
    # build-dataset stores them in the manifest, whose numeric leaves become MLflow metric names (free text may not)
    from nsarm.tracking import split_manifest

    _, counts = split_manifest({"extra": {"build": {"shard": hr, "degrade": lr, "caption": cap}}})
    assert counts["extra.build.caption.totals.n_fallback"] == 1
    assert [k for k in counts if not re.fullmatch(r"[\w\-. :/]+", k)] == []

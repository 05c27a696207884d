"""build-dataset's markdown artifact reads the three stage summaries as one schema (`dataset.stage.StageSummary`):
each stage's counts come out in its row, and a renamed or missing key fails instead of printing 0 (issue 18.4).
Called directly, without a Prefect server."""

from __future__ import annotations

import pytest

from dataset.stage import ShardResult, summarize
from flows.build_dataset import _stats_markdown

MANIFEST = {"name": "ds", "version": "v1", "root": "/data/ds", "num_samples": 7, "num_shards": 2}


def _summaries() -> dict:
    hr_stats = {"failed_to_download": 2, "failed_to_process": 1, "duplicates": 3}
    return {
        "shard": summarize("shard", "/data/ds", "hr", "c0ffee", [
            ShardResult(True, 0, n=4, n_bad=6, stats=hr_stats), ShardResult(True, 1, n=3, skipped=True, stats={}),
            ShardResult(False, 2, err="OSError: gone")], 2.0, ("failed_to_download", "failed_to_process", "duplicates")),
        "degrade": summarize("degrade", "/data/ds", "lr/d3g", "d3g", [
            ShardResult(True, 0, n=3, n_bad=1, stats={}), ShardResult(True, 1, n=3, stats={})], 3.0),
        "caption": summarize("caption", "/data/ds", "captions/c4p", "c4p", [
            ShardResult(True, 0, n=4, stats={"too_long": 2}), ShardResult(True, 1, n=3, stats={"too_long": 0})],
            7.0, ("too_long",)),
    }


def test_each_stage_row_shows_its_own_counts():
    rows = {line.split(" | ")[0].strip("| "): line for line in _stats_markdown(_summaries(), MANIFEST, "run9")
            .splitlines() if line.startswith("| ") and not line.startswith("| stage")}
    assert rows["shard"] == ("| shard | 2/3 shards → `hr` | 7 images ok, 2 download failures, 1 rejected, 3 duplicates, "
                             "1 failed shards | 2.0 img/s |")
    assert rows["degrade"] == "| degrade | 2/2 shards → `lr/d3g` | 6 LR images, 1 bad samples, 0 failed shards | 2.0 img/s |"
    assert rows["caption"] == ("| caption | 2/2 shards → `captions/c4p` | 7 captions, 2 longer than 512 T5 tokens, "
                               "0 failed shards | 1.0 captions/s |")


@pytest.mark.parametrize("stage, old, new", [("caption", "shards_done", "done"), ("degrade", "samples", "n_ok"),
                                             ("shard", "new_samples", "new_images")])
def test_a_renamed_summary_key_fails_instead_of_printing_zero(stage, old, new):
    summary = _summaries()
    summary[stage][new] = summary[stage].pop(old)
    with pytest.raises(ValueError, match=rf"stage '{stage}'.*missing \['{old}'\], unknown \['{new}'\]"):
        _stats_markdown(summary, MANIFEST, "run9")


def test_a_missing_stage_total_fails():
    summary = _summaries()
    del summary["shard"]["totals"]["duplicates"]
    with pytest.raises(KeyError, match="duplicates"):
        _stats_markdown(summary, MANIFEST, "run9")

"""`dataset.distributed.distribute`, the one Ray distributor of the shard stages, on the session's local Ray: failed
shards are resubmitted up to `retries` times, a task that raises or returns ok=False never raises in the driver, the
number in flight stays within the slots' capacity, and progress is reported once per shard."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dataset.distributed import TaskSlots, distribute, task_name
from dataset.stage import ShardResult

pytestmark = pytest.mark.integration


def _attempt(folder: str, shard: int) -> int:
    """Count this attempt in a file per shard (Ray workers share the disk, not memory); returns its number, 1-based."""
    f = Path(folder) / f"{shard}.attempts"
    n = int(f.read_text()) + 1 if f.exists() else 1
    f.write_text(str(n))
    return n


def _flaky(folder: str, fail_first: dict, shard: int) -> ShardResult:
    """Reports a failure on its first `fail_first[shard]` attempts, raises on shard 99, then succeeds."""
    n = _attempt(folder, shard)
    if shard == 99:
        raise RuntimeError(f"boom on shard {shard}")
    if n <= fail_first.get(shard, 0):
        return ShardResult(False, shard, err=f"attempt {n} failed")
    return ShardResult(True, shard, n=shard + 10, stats={"attempt": n})


class CountingSlots(TaskSlots):
    """TaskSlots that record the most refs in flight at once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.now = self.peak = 0

    def submit(self, shard: int):
        self.now += 1
        self.peak = max(self.peak, self.now)
        return super().submit(shard)

    def finished(self, ref, error):
        self.now -= 1


@pytest.fixture
def slots_for(ray_local, tmp_path):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests package

    def make(fail_first: dict, limit: int) -> CountingSlots:
        return CountingSlots(_flaky, (str(tmp_path), fail_first), lambda s: task_name("test", "v", s),
                             {"num_cpus": 0.5}, limit)

    return make


def _attempts(tmp_path, shard: int) -> int:
    return int((tmp_path / f"{shard}.attempts").read_text())


def test_failed_shards_are_retried_until_they_pass_or_retries_run_out(slots_for, tmp_path):
    slots, seen = slots_for({1: 2, 2: 5}, limit=2), []
    results = distribute([0, 1, 2, 3], slots, retries=2, stage="test",
                         progress=lambda res, done, total: seen.append((res.shard_id, done, total)))
    assert [r.shard_id for r in results] == [0, 1, 2, 3]  # the order given, whatever the completion order
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[1].n == 11 and results[1].stats == {"attempt": 3}  # failed twice, passed on the last retry
    assert results[2].err == "attempt 3 failed"  # 1 + 2 retries, then given up
    assert [_attempts(tmp_path, s) for s in range(4)] == [1, 3, 3, 1]
    assert sorted(s for s, _, _ in seen) == [0, 1, 2, 3] and [d for _, d, _ in seen] == [1, 2, 3, 4]
    assert {t for _, _, t in seen} == {4}
    assert slots.peak == 2  # never more than the capacity in flight


def test_a_task_that_raises_is_a_failed_result_not_an_exception(slots_for, tmp_path):
    slots = slots_for({}, limit=1)
    [bad, good] = distribute([99, 5], slots, retries=1, stage="test")
    assert not bad.ok and bad.shard_id == 99 and "boom on shard 99" in bad.err and bad.stats is None
    assert _attempts(tmp_path, 99) == 2  # retried once
    assert good.ok and good.n == 15 and slots.peak == 1


def test_no_capacity_fails_the_remaining_shards_without_raising(slots_for, tmp_path):
    slots = slots_for({}, limit=0)
    results = distribute([0, 1], slots, retries=3, stage="test")
    assert [(r.ok, r.shard_id) for r in results] == [(False, 0), (False, 1)]
    assert all("no Ray worker left" in r.err for r in results) and not list(tmp_path.glob("*.attempts"))

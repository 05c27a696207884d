"""Ray Train on 2 CPU workers (gloo), tiny preset, real photos: a killed worker resumes from the last checkpoint
with the step counter and data position continuing; a rerun of the same run name resumes; the trained export
loads in our format and the official key layout."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.integration


def _records(log) -> dict[int, list[dict]]:
    out = {}
    for r in range(2):
        out[r] = [json.loads(x) for x in open(f"{log}.rank{r}.jsonl")]
    return out


def _expected_keys(root, rank, n_steps, micro=2):
    """Keys rank `rank` must train on in steps 1..n_steps, from the reader's own (seed, epoch) order."""
    from dataset.reader import DatasetReader
    from nsarm.train.photo_dataset import CAP_HASH, DEG_HASH

    out, epoch = [], 0
    while len(out) < n_steps:
        reader = DatasetReader(root, DEG_HASH, CAP_HASH, rank=rank, world_size=2, seed=0, block_size=64,
                               batch_size=micro, drop_last=True, decode=False)
        reader.set_epoch(epoch)
        keys = [s["key"] for s in reader]
        out += [keys[i:i + micro] for i in range(0, len(keys) - micro + 1, micro)]  # partial tail dropped
        epoch += 1
    return out[:n_steps]


def test_killed_worker_resumes_then_rerun_resumes(ray_local, train_root, run_storage, tmp_path, monkeypatch):
    from nsarm.checkpoints import load_checkpoint, read_state_dict
    from nsarm.train.ray_trainer import run_stage

    root, log = train_root["root"], tmp_path / "keys"
    monkeypatch.setenv("NSARM_TRAIN_SAMPLE_LOG", str(log))
    monkeypatch.setenv("NSARM_TRAIN_FAIL_AT_STEP", "3")
    monkeypatch.setenv("NSARM_TRAIN_FAIL_RANK", "1")
    over = {"steps": 4, "checkpoint_every": 2, "image_every": 0}
    out = run_stage(root, "tiny", 1, 2, False, storage_path=run_storage, run_name="ft", overrides=over)
    assert out["metrics"]["step"] == 4
    recs = _records(log)
    for r in range(2):
        steps = [x["step"] for x in recs[r]]
        # rank 1 died after step 3; both ranks restarted from the step-2 checkpoint: step 3 is trained again
        assert steps == [1, 2, 3, 3, 4], (r, steps)
        effective = {x["step"]: x["keys"] for x in recs[r]}  # the re-done step 3 overwrites the lost one
        assert [effective[s] for s in (1, 2, 3, 4)] == _expected_keys(root, r, 4)
        assert recs[r][2]["keys"] == recs[r][3]["keys"]  # step 3 after resume = step 3 before: position restored

    # stop-and-rerun with more steps: resumes from step 4, does not repeat a step
    monkeypatch.delenv("NSARM_TRAIN_FAIL_AT_STEP")
    out2 = run_stage(root, "tiny", 1, 2, False, storage_path=run_storage, run_name="ft", overrides={**over, "steps": 6})
    recs = _records(log)
    for r in range(2):
        steps = [x["step"] for x in recs[r]]
        assert steps == [1, 2, 3, 3, 4, 5, 6], (r, steps)
        effective = {x["step"]: x["keys"] for x in recs[r]}
        assert [effective[s] for s in range(1, 7)] == _expected_keys(root, r, 6)
    assert out2["metrics"]["step"] == 6

    # the export: our format loads (every key filled), the official layout has transformer + map_transformer.* keys
    export = out2["export"]
    model = load_checkpoint(export["uri"])
    official = read_state_dict(export["official"])
    assert set(official) == set(model.official_state_dict())
    assert any(k.startswith("map_transformer.") for k in official)
    for k, v in model.official_state_dict().items():
        assert torch.equal(official[k], v), k
    from nsarm.train.export import verify_export

    assert verify_export(export["uri"])["sha256"] == export["sha256"]

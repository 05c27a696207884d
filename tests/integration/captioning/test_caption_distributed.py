"""The Ray caption job: an actor pool on the session's local cluster (num_cpus=2) that survives a killed actor."""

from __future__ import annotations

import pytest

from captioning.config import CaptionConfig, cap_hash
from captioning.worker import caption_shards, read_captions
from dataset import contract

pytestmark = pytest.mark.integration


def test_pool_finishes_every_shard_after_an_actor_is_killed(ray_local, ray_caption_root, tmp_path, tiny_llava_dir):
    from captioning.distributed import CaptionPool, run_captioning

    ray = ray_local
    cfg = CaptionConfig(model_path=str(tiny_llava_dir), greedy=True, max_new_tokens=8, batch_size=2)
    killed = []

    def kill_one_busy_actor(result, done, total):
        # After the first shard finishes, kill an actor that is working on a shard right now.
        if not killed and pool.in_flight():
            actor, shard = pool.in_flight()[0]
            ray.kill(actor)
            killed.append(shard)

    pool = CaptionPool(ray_caption_root, cfg, num_actors=2, max_retries=2)
    assert pool.options == {"num_cpus": 1.0} and pool.num_actors == 2
    try:
        results = pool.run(list(range(6)), progress=kill_one_busy_actor)
    finally:
        pool.shutdown()
    assert killed and pool.actor_failures >= 1
    assert [r.shard_id for r in results] == list(range(6)) and all(r.ok and r.n == 2 for r in results)
    h = cap_hash(cfg)
    for shard in range(6):
        assert contract.exists(contract.caption_stats(ray_caption_root, h, shard))

    # Greedy captions do not depend on which actor (or process) made them: a plain in-process run agrees.
    local_root = str(tmp_path / "copy")
    for shard in range(6):
        for name in (f"{shard:06d}.tar", f"{shard:06d}_stats.json"):
            contract.put_atomic(contract.join(local_root, "hr", name),
                                open(contract.join(ray_caption_root, "hr", name), "rb").read())
    caption_shards(local_root, cfg)
    for shard in range(6):
        assert read_captions(ray_caption_root, h, shard) == read_captions(local_root, h, shard)

    # Rerunning the job through the public entry point resumes: every shard is already done.
    summary = run_captioning(ray_caption_root, cfg, num_actors=1)
    assert (summary["shards_total"], summary["shards_skipped"], summary["new_samples"], summary["shards_failed"]) == (6, 6, 0, {})


def test_missing_model_dir_fails_fast_with_the_path(ray_local, ray_caption_root, tmp_path):
    from captioning.distributed import run_captioning

    missing = str(tmp_path / "no-llava-here")
    with pytest.raises(RuntimeError) as err:
        run_captioning(ray_caption_root, model_path=missing, num_actors=1)  # preset "paper" + override
    assert missing in str(err.value) and "llava-hf/llava-1.5-13b-hf" in str(err.value)


def test_captions_on_s3_root(s3_bucket, sample_photos):
    """The same contract on an object store (moto S3): fsspec URLs end to end, resume included."""
    from captioning.tiny import photo_jpeg, write_hr_shard

    root = f"{s3_bucket}/ds"
    samples = [(p.photo_id, photo_jpeg(p.path, 64), {"ai_description": p.path.stem}) for p in sample_photos[:3]]
    write_hr_shard(root, 0, samples)
    cfg = CaptionConfig(backend="metadata")
    assert caption_shards(root, cfg)["new_samples"] == 3
    assert read_captions(root, cap_hash(cfg), 0) == {k: m["ai_description"] for k, _, m in samples}
    assert caption_shards(root, cfg)["shards_skipped"] == 1

"""The per-worker loop alone (LocalContext, one process): checkpoint round trip, exact resume, export."""

from __future__ import annotations

import json

import pytest
import torch

from nsarm.train import state as st
from nsarm.train.config import train_config
from nsarm.train.loop import LocalContext, LoopOptions, build_models, train_stage
from nsarm.train.steps import StageModule


def _run(root, run_dir, latent_cache, steps, log, **kw):
    cfg = train_config("tiny", 2, steps=steps, batch_size=2, checkpoint_every=2, image_every=0, warmup_steps=2, **kw)
    ctx = LocalContext(run_dir, keep=cfg.keep_checkpoints)
    opts = LoopOptions(latent_cache=latent_cache, caption_cache=latent_cache + "-captions",
                       hooks={"sample_log": str(log)})
    return cfg, ctx, train_stage(cfg, root, ctx, options=opts)


def _keys(log) -> dict[int, list[str]]:
    out = {}
    for line in open(f"{log}.rank0.jsonl"):
        rec = json.loads(line)
        out[rec["step"]] = rec["keys"]  # a re-done step would overwrite; resume must never re-do one
    return out


@pytest.fixture(scope="module")
def two_steps(train_root, latent_cache, tmp_path_factory):
    """A stage-2 run of 2 steps (checkpoint at step 2) that the tests copy or read."""
    d = tmp_path_factory.mktemp("two-steps")
    cfg, ctx, out = _run(train_root["root"], d / "run", latent_cache, 2, d / "b.log")
    assert out["step"] == 2 and out["resumed_from_step"] == 0
    return cfg, d


def test_resume_continues_exactly(train_root, latent_cache, two_steps, tmp_path):
    """4 steps straight == 2 steps, stop, rerun to 4 (same run dir): bitwise equal weights (CPU), the step counter
    continues, and the samples of steps 3-4 are exactly those of the uninterrupted run (none repeated/skipped)."""
    import shutil

    root = train_root["root"]
    _, ctx_a, a = _run(root, tmp_path / "a", latent_cache, 4, tmp_path / "a.log")
    shutil.copytree(two_steps[1] / "run", tmp_path / "b")
    shutil.copy(f"{two_steps[1] / 'b.log'}.rank0.jsonl", f"{tmp_path / 'b.log'}.rank0.jsonl")
    _, ctx_b2, b2 = _run(root, tmp_path / "b", latent_cache, 4, tmp_path / "b.log")
    assert b2["resumed_from_step"] == 2 and b2["step"] == 4
    assert [r["step"] for r in ctx_b2.reports] == [4]
    ka, kb = _keys(tmp_path / "a.log"), _keys(tmp_path / "b.log")
    lines_b = [json.loads(x)["step"] for x in open(f"{tmp_path / 'b.log'}.rank0.jsonl")]
    assert lines_b == [1, 2, 3, 4]  # no step trained twice
    assert ka == kb
    seen = [k for s in (1, 2, 3, 4) for k in ka[s]]
    assert len(seen) == len(set(seen)) == 8  # 10 samples per epoch: 8 distinct in the first 4 steps of 2
    sa = st.load_state(ctx_a.latest_checkpoint())
    sb = st.load_state(ctx_b2.latest_checkpoint())
    assert sa["step"] == sb["step"] == 4 and sa["data"] == sb["data"] == [{**sa["data"][0], "epoch": 0, "consumed": 8}]
    if torch.cuda.is_available():
        # Bitwise equality is a CPU property: on CUDA the map net's adaptive_avg_pool2d backward has no deterministic
        # kernel (torch says so under use_deterministic_algorithms), and the resumed run differs in the last bits
        # (seen on an H100, where every check above passed).
        return
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    assert a["train/loss"] == b2["train/loss"]


def test_checkpoint_round_trip_bitwise(two_steps, tmp_path):
    cfg, d = two_steps
    ckpt = LocalContext(d / "run").latest_checkpoint()
    state = st.load_state(ckpt)
    model, _ = build_models(cfg, torch.device("cpu"))
    module = StageModule(model, 2)
    module.load_state_dict(state["model"])
    for k, v in module.state_dict().items():
        assert torch.equal(v, state["model"][k]) and v.dtype == state["model"][k].dtype, k
    # second save of the loaded weights: identical bytes of every tensor
    st.save_state(tmp_path / "again", step=2, data=state["data"], rng=state["rng"], optimizer=state["optimizer"],
                  scheduler=state["scheduler"], model={k: v.clone() for k, v in module.state_dict().items()},
                  train_config=state["train_config"], model_config=state["model_config"], world_size=1)
    again = st.load_state(tmp_path / "again")
    assert all(torch.equal(again["model"][k], v) for k, v in state["model"].items())
    assert state["optimizer"]["state"] and state["step"] == 2 and len(state["rng"]) == 1
    # the kept checkpoints are the last K
    assert sorted(p.name for p in (d / "run" / "checkpoints").iterdir()) == ["step_00000002"]


def test_resume_refuses_other_stage(train_root, latent_cache, two_steps, tmp_path):
    cfg = train_config("tiny", 1, steps=3, batch_size=2, image_every=0)
    with pytest.raises(ValueError, match="stage 2"):
        train_stage(cfg, train_root["root"], LocalContext(two_steps[1] / "run"),
                    options=LoopOptions(latent_cache=latent_cache))

"""CaptionWorker: the parquet/stats contract, resume and idempotence, fallbacks, long-caption counting, LR input."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from captioning.captioner import LlavaCaptioner
from captioning.config import FIXED_CAPTION, CaptionConfig, cap_hash
from captioning.tiny import write_hr_shard
from captioning.worker import CaptionWorker, T5TokenCounter, caption_shards, read_captions
from dataset import contract


def _table(root, cfg, shard):
    with open(contract.caption_parquet(root, cap_hash(cfg), shard), "rb") as f:
        return pq.read_table(f)


def test_metadata_shards_follow_the_parquet_contract(caption_root, photo_samples):
    cfg = CaptionConfig(backend="metadata")
    summary = caption_shards(caption_root, cfg)
    assert summary["shards_total"] == 3 and summary["shards_done"] == 3 and summary["new_samples"] == 12
    assert not summary["shards_failed"]
    h = summary["version"]
    assert contract.read_json(contract.join(contract.caption_dir(caption_root, h), "config.json"))["backend"] == \
        "metadata"

    t = _table(caption_root, cfg, 1)
    assert t.column_names == ["key", "caption", "captioner", "prompt", "params", "error", "t5_tokens"]
    assert str(t.schema.field("t5_tokens").type) == "int32"
    rows = t.to_pylist()
    assert [r["key"] for r in rows] == [k for k, _, _ in photo_samples[4:8]]  # tar order
    # photos 4..7 get META_VARIANTS 1, 2, 0, 1: blank description, nothing usable, full, blank (conftest)
    assert [r["captioner"] for r in rows] == ["metadata:ai_description", "fixed", "metadata:photo_description",
                                              "metadata:ai_description"]
    assert rows[0]["caption"] == photo_samples[4][2]["ai_description"] and rows[1]["caption"] == FIXED_CAPTION
    assert rows[2]["caption"] == photo_samples[6][2]["photo_description"]
    assert rows[1]["error"].startswith("no non-empty metadata field") and rows[0]["error"] == ""
    assert all(r["params"] == "{}" and r["prompt"] == "" for r in rows)

    stats = contract.read_json(contract.caption_stats(caption_root, h, 1))
    assert stats["n"] == 4 and stats["n_fallback"] == 1 and stats["too_long"] == 0
    assert stats["sources"] == {"metadata:photo_description": 1, "metadata:ai_description": 2, "fixed": 1}
    assert read_captions(caption_root, h, 1) == {r["key"]: r["caption"] for r in rows}


def test_resume_skips_done_shards_and_redoes_partial_ones(caption_root):
    cfg = CaptionConfig(backend="fixed")
    worker = CaptionWorker(caption_root, cfg)
    assert caption_shards(caption_root, cfg, shards=[0], worker=worker)["new_samples"] == 4
    h = cap_hash(cfg)
    done_stats = contract.caption_stats(caption_root, h, 0)
    before = open(done_stats, "rb").read()
    # A crash after shard 1's parquet but before its stats: a stale (here: garbage) parquet and no done marker.
    contract.put_atomic(contract.caption_parquet(caption_root, h, 1), b"partial")

    summary = caption_shards(caption_root, cfg, worker=worker)
    assert (summary["shards_done"], summary["shards_skipped"], summary["new_samples"]) == (3, 1, 8)
    assert open(done_stats, "rb").read() == before  # shard 0 untouched
    assert len(_table(caption_root, cfg, 1)) == 4  # shard 1 rewritten whole
    again = caption_shards(caption_root, cfg, worker=worker)
    assert (again["shards_skipped"], again["new_samples"], again["samples"]) == (3, 0, 12)  # idempotent


def test_worker_never_raises_and_names_the_problem(tmp_path):
    worker = CaptionWorker(str(tmp_path), CaptionConfig(backend="fixed"))
    result = worker(7)
    assert not result.ok and result.shard_id == 7 and "000007.tar" in result.err
    assert not contract.exists(contract.caption_stats(str(tmp_path), worker.hash, 7))


def test_llava_shard_with_corrupt_image_records_fallback(tmp_path, photo_samples, tiny_llava_dir):
    root = str(tmp_path)
    samples = [photo_samples[0], ("broken", photo_samples[1][1][:200], {"photo_description": "a broken file"}),
               photo_samples[2]]
    write_hr_shard(root, 0, samples)
    cfg = CaptionConfig(model_path=str(tiny_llava_dir), greedy=True, max_new_tokens=6, batch_size=2)
    llava = LlavaCaptioner(cfg)
    summary = caption_shards(root, cfg, worker=CaptionWorker(root, cfg, captioner=llava))
    assert summary["shards_done"] == 1
    rows = _table(root, cfg, 0).to_pylist()
    assert [r["key"] for r in rows] == [samples[0][0], "broken", samples[2][0]]
    assert rows[1]["caption"] == "a broken file" and rows[1]["error"] == "image could not be decoded"
    images = [Image.open(io.BytesIO(s[1])) for s in (samples[0], samples[2])]
    assert [rows[0]["caption"], rows[2]["caption"]] == llava.caption(images)
    assert json.loads(rows[0]["params"]) == {"do_sample": False, "max_new_tokens": 6}
    assert rows[0]["prompt"] == cfg.prompt() and rows[0]["captioner"] == f"llava:{tiny_llava_dir.name}"


def test_lr_images_are_captioned_when_configured(tmp_path, photo_samples, tiny_llava_dir):
    root, deg = str(tmp_path), "deg0001"
    write_hr_shard(root, 0, photo_samples[:3])
    lr = []
    for key, jpg, _ in photo_samples[:3]:
        buf = io.BytesIO()
        Image.open(io.BytesIO(jpg)).resize((64, 64)).rotate(90).save(buf, format="PNG")
        lr.append((key, {"png": buf.getvalue(), "deg.json": b"{}"}))
    contract.put_atomic(contract.lr_tar(root, deg, 0), contract.tar_bytes(lr))
    contract.write_json_atomic(contract.lr_stats(root, deg, 0), {"n": 3})
    cfg = CaptionConfig(model_path=str(tiny_llava_dir), greedy=True, max_new_tokens=6, image="lr", deg_hash=deg)
    llava = LlavaCaptioner(cfg)
    caption_shards(root, cfg, worker=CaptionWorker(root, cfg, captioner=llava))
    got = _table(root, cfg, 0).column("caption").to_pylist()
    assert got == llava.caption([Image.open(io.BytesIO(f["png"])) for _, f in lr])
    assert got != llava.caption([Image.open(io.BytesIO(jpg)) for _, jpg, _ in photo_samples[:3]])


class _WordTokenizer:
    """A stand-in for the T5 tokenizer with a known count: one token per word plus EOS."""

    def encode(self, text):
        return text.split() + ["</s>"]


@pytest.mark.parametrize("tokenizer", [None, _WordTokenizer()])
def test_captions_over_the_text_limit_are_counted_not_cut(caption_root, tokenizer):
    long_caption = " ".join(["colourful"] * 600)
    cfg = CaptionConfig(backend="fixed", fixed_caption=long_caption, text_max_tokens=512)
    caption_shards(caption_root, cfg, shards=[0], worker=CaptionWorker(caption_root, cfg, text_tokenizer=tokenizer))
    rows = _table(caption_root, cfg, 0).to_pylist()
    assert all(r["caption"] == long_caption for r in rows)
    expected = 601 if tokenizer else 781  # exact: 600 words + EOS; approx: ceil(1.3*600) + 1
    assert {r["t5_tokens"] for r in rows} == {expected}
    stats = contract.read_json(contract.caption_stats(caption_root, cap_hash(cfg), 0))
    assert stats["too_long"] == 4 and stats["max_t5_tokens"] == expected and len(stats["too_long_keys"]) == 4


def test_token_approximation():
    count = T5TokenCounter()
    assert count("") == 1
    assert count("A cat, sitting.") == 4 + 2 + 1  # ceil(1.3 * 3 words), 2 marks, EOS

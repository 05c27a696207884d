"""The caption stage's per-shard callable (STYLE G8) and its plain single-process loop.

Reads   {root}/hr/{shard:06d}.tar                    {key}.jpg + {key}.json (source metadata), docs/DESIGN.md §3
        {root}/lr/{deg_hash}/{shard:06d}.tar         {key}.png, when CaptionConfig.image == "lr"
Writes  {root}/captions/{cap_hash}/config.json       asdict(CaptionConfig) (G3)
        {root}/captions/{cap_hash}/{shard:06d}.parquet  one row per HR sample, in tar order:
            key (str), caption (str, never cut), captioner (str: llava:<model> | metadata:<field> | fixed),
            prompt (str), params (str, JSON generation settings), error (str, why a fallback was used, else ""),
            t5_tokens (int32, token count for the 512-token text encoder; see `T5TokenCounter`)
        {root}/captions/{cap_hash}/{shard:06d}_stats.json  written LAST: its presence means the shard is done

    nsarm caption ROOT --backend metadata          # single process; --ray for the actor pool (distributed.py)
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import asdict

from captioning.captioner import Captioner, build_captioner
from captioning.config import CaptionConfig, cap_hash
from dataset import contract
from dataset.stage import ProgressReporter, ShardResult, run_in_process, summarize

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PARQUET_COLUMNS = ("key", "caption", "captioner", "prompt", "params", "error", "t5_tokens")
# `_stats.json` keys a run summary sums over the done shards (n is its samples). Not the free-text `errors` or
# `sources` histograms: the summary is logged to MLflow with its keys as metric names.
TOTALS = ("too_long", "n_fallback")


class T5TokenCounter:
    """Counts a caption's tokens for the text encoder (flan-t5-xl, 512 tokens), to report captions it would cut.

    With a tokenizer (any object with `encode`, e.g. a local T5TokenizerFast) the count is exact, EOS included.
    Without one it is an approximation: ceil(1.3 x words) + punctuation marks + 1 EOS. T5's SentencePiece vocabulary
    splits English prose into about 1.2-1.3 pieces per word and gives most punctuation its own piece, so on LLaVA-style
    prose this errs on the high side: a borderline caption is reported rather than missed.
    """

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.name = f"tokenizer:{type(tokenizer).__name__}" if tokenizer is not None else "approx:1.3*words+punct+1"

    def __call__(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text))
        words, punct = len(re.findall(r"\w+", text)), len(re.findall(r"[^\w\s]", text))
        return math.ceil(1.3 * words) + punct + 1

    @classmethod
    def from_config(cls, cfg: CaptionConfig) -> T5TokenCounter:
        if not cfg.t5_tokenizer_path:
            return cls()
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(cfg.t5_tokenizer_path, local_files_only=True))


def decode_image(data: bytes | None):
    """Bytes -> RGB PIL image, or None when absent/corrupt (the captioner then falls back and records why)."""
    if data is None:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")  # convert() forces the full decode: truncated files fail here, not later
    except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable", recorded by the caller
        log.warning("undecodable image (%s: %s)", type(e).__name__, e)
        return None


def _parse_meta(files: dict[str, bytes]) -> tuple[dict, str]:
    if "json" not in files:  # legitimate (e.g. a local-folder source); the metadata backend records its fallback
        return {}, ""
    try:
        meta = json.loads(files["json"])
        return (meta, "") if isinstance(meta, dict) else ({}, ".json is not an object")
    except ValueError as e:
        return {}, f"bad .json metadata: {e}"


def input_shards(root: str, cfg: CaptionConfig) -> list[int]:
    """Shards ready to caption: HR shards marked done, and with image="lr" also present as done LR shards."""
    shards = contract.list_shards(root, "hr", done_only=True)
    if cfg.image == "lr":
        lr_done = set(contract.list_shards(root, f"lr/{cfg.deg_hash}", done_only=True))
        shards = [s for s in shards if s in lr_done]
    return shards


def write_config(root: str, cfg: CaptionConfig) -> str:
    """Save `asdict(cfg)` as `{root}/captions/{cap_hash}/config.json` (once) and return the hash."""
    h = cap_hash(cfg)
    url = contract.join(contract.caption_dir(root, h), "config.json")
    if not contract.exists(url):
        contract.write_json_atomic(url, {"cap_hash": h, **asdict(cfg)})
    return h


class CaptionWorker:
    """Captions one shard per call. Heavy state (the LLaVA weights) loads once in `__init__`; `__call__` never
    raises, so the same object runs in a loop, a Ray actor or a Prefect task.

    Args:
        root: dataset root (local path or fsspec URL such as s3://bucket/prefix).
        cfg: the caption configuration; its hash names the output folder.
        captioner: an already built captioner to share (tests, benchmarks); default `build_captioner(cfg)`.
        text_tokenizer: the text encoder's tokenizer for exact token counts; default from cfg or approximate.
    """

    def __init__(self, root: str, cfg: CaptionConfig, captioner: Captioner | None = None, text_tokenizer=None):
        self.root, self.cfg = root, cfg
        self.hash = cap_hash(cfg)
        self.captioner = captioner if captioner is not None else build_captioner(cfg)
        self.count_tokens = T5TokenCounter(text_tokenizer) if text_tokenizer is not None \
            else T5TokenCounter.from_config(cfg)
        self._config_written = False

    def _read(self, shard: int):
        """HR samples in tar order as (key, image bytes or None, meta, note), plus the rejected tar members."""
        samples, rejected = [], []
        for key, files, err in contract.iter_tar_samples(contract.hr_tar(self.root, shard)):
            if files is None:
                rejected.append(f"{key}: {err}")
                continue
            meta, note = _parse_meta(files)
            data = next((files[e] for e in IMAGE_EXTS if e in files), None)
            samples.append((key, data, meta, note if data is not None else (note or "no image in HR tar")))
        if self.cfg.image == "lr":
            lr = {k: f.get("png") for k, f, e in contract.iter_tar_samples(
                contract.lr_tar(self.root, self.cfg.deg_hash, shard)) if f is not None}
            samples = [(k, lr.get(k), m, "; ".join(x for x in (note, "" if k in lr else "key missing from LR tar") if x))
                       for k, _, m, note in samples]
        return samples, rejected

    def _caption(self, shard: int, samples) -> list[dict]:
        cfg, rows = self.cfg, []
        if cfg.backend == "llava" and not cfg.greedy:
            import torch

            torch.manual_seed(cfg.seed + shard)  # a rerun of the shard samples the same captions
        params = json.dumps(cfg.generation_params(), sort_keys=True)
        # Decode one batch at a time: a shard of 1024² photos would not fit in memory decoded all at once.
        for start in range(0, len(samples), cfg.batch_size):
            chunk = samples[start:start + cfg.batch_size]
            images = [decode_image(d) for _, d, _, _ in chunk] if cfg.backend == "llava" else [None] * len(chunk)
            caps = self.captioner.describe(images, [m for _, _, m, _ in chunk])
            for (key, _, _, note), cap in zip(chunk, caps, strict=True):
                error = "; ".join(x for x in (note, cap.error) if x)
                rows.append({"key": key, "caption": cap.text, "captioner": cap.source, "prompt": cap.prompt,
                             "params": params, "error": error, "t5_tokens": self.count_tokens(cap.text)})
        return rows

    def _write(self, shard: int, rows: list[dict], rejected: list[str], seconds: float,
               hr_sha: str | None = None) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            **{c: pa.array([r[c] for r in rows], pa.string()) for c in PARQUET_COLUMNS[:-1]},
            "t5_tokens": pa.array([r["t5_tokens"] for r in rows], pa.int32()),
        })
        buf = io.BytesIO()
        pq.write_table(table, buf)
        contract.put_atomic(contract.caption_parquet(self.root, self.hash, shard), buf.getvalue())
        limit = self.cfg.text_max_tokens
        long_keys = [r["key"] for r in rows if r["t5_tokens"] > limit]
        stats = {
            "shard": shard, "cap_hash": self.hash, "hr_tar_sha256": hr_sha, "backend": self.cfg.backend,
            "image": self.cfg.image, "n": len(rows),
            "sources": dict(Counter(r["captioner"] for r in rows)),
            "n_fallback": sum(bool(r["error"]) for r in rows),
            "errors": dict(Counter(r["error"] for r in rows if r["error"])),
            "rejected_members": rejected,
            "text_max_tokens": limit, "token_counter": self.count_tokens.name,
            "too_long": len(long_keys), "too_long_keys": long_keys[:50],
            "max_t5_tokens": max((r["t5_tokens"] for r in rows), default=0),
            "seconds": round(seconds, 3), "captions_per_s": round(len(rows) / seconds, 3) if seconds > 0 else None,
        }
        contract.write_json_atomic(contract.caption_stats(self.root, self.hash, shard), stats)  # LAST: done marker
        return stats

    def __call__(self, shard: int) -> ShardResult:
        t0 = time.perf_counter()
        try:
            stats_url = contract.caption_stats(self.root, self.hash, shard)
            done = contract.done_stats(stats_url, self.root, shard)  # None also when the HR shard was rewritten
            if done is not None:
                return ShardResult(True, shard, done["n"], n_bad=len(done.get("rejected_members", [])), skipped=True,
                                   stats=done)
            hr_sha = contract.hr_tar_sha256(self.root, shard)  # read before the tar: a later rewrite makes this stale
            if not self._config_written:  # the config beside the captions (G3), also when called outside a runner
                write_config(self.root, self.cfg)
                self._config_written = True
            samples, rejected = self._read(shard)
            rows = self._caption(shard, samples)
            seconds = time.perf_counter() - t0
            stats = self._write(shard, rows, rejected, seconds, hr_sha)
            return ShardResult(True, shard, len(rows), n_bad=len(rejected), seconds=seconds, stats=stats)
        except Exception as e:  # noqa: BLE001 - G8: a failed shard is a result (retried by the caller), not a crash
            log.exception("caption shard %06d failed", shard)
            return ShardResult(False, shard, err=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t0)


def summarize_run(root: str, h: str, results: list[ShardResult], seconds: float, **extra) -> dict:
    """The stage summary (`dataset.stage.StageSummary`) of a caption run into `{root}/captions/{h}`, loop or Ray."""
    return summarize("caption", root, f"captions/{h}", h, results, seconds, TOTALS, **extra)


def progress_reporter() -> ProgressReporter:
    """The caption stage's progress lines, into this module's logger (a flow forwards it to the run's log)."""
    return ProgressReporter("caption", "captions", log.info, time.perf_counter)


def caption_shards(root: str, cfg: CaptionConfig, shards: list[int] | None = None, retries: int = 1,
                   worker: CaptionWorker | None = None) -> dict:
    """Caption `shards` (default: every ready input shard) in this process; failed shards retried `retries` times.

    Returns:
        `summarize_run(...)`: the stage summary, version = cap_hash, samples = caption rows.
    """
    t0 = time.perf_counter()
    h = write_config(root, cfg)
    worker = worker or CaptionWorker(root, cfg)
    shards = input_shards(root, cfg) if shards is None else shards
    results = run_in_process(shards, worker, retries=retries, progress=progress_reporter())
    return summarize_run(root, h, results, time.perf_counter() - t0)


def read_captions(root: str, hash_: str, shard: int) -> dict[str, str]:
    """{key: caption} of one captioned shard (what the training data loader joins onto HR/LR samples)."""
    table = contract.read_parquet(contract.caption_parquet(root, hash_, shard), columns=["key", "caption"])
    return dict(zip(table["key"].to_pylist(), table["caption"].to_pylist(), strict=True))

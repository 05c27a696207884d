"""Captioners: one interface, three backends (LLaVA, source metadata, the paper's fixed prompt), and a factory.

    captioner = build_captioner(CaptionConfig(model_path="/models/llava-1.5-13b-hf"))
    texts = captioner.caption(images)                    # list[PIL.Image] -> list[str]
    rich = captioner.describe(images, metas)             # -> list[Caption] (text + where it came from)

Every backend degrades gracefully instead of failing a sample: LLaVA falls back to the metadata description for
an image it cannot read (None) or a caption that comes out empty, and metadata falls back to the fixed caption.
The fallback used is recorded in `Caption.source`, so nothing is silently substituted.
"""

from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from captioning.config import DEFAULT_MODEL_ID, CaptionConfig
from nsarm.compat import ensure_torchvision_importable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caption:
    text: str  # the caption, never cut (long ones are counted by the worker, not truncated)
    source: str  # "llava:<model dir name>" | "metadata:<field>" | "fixed"
    prompt: str  # the prompt given to the model ("" for backends that do not generate)
    error: str = ""  # why a fallback was used ("" when the primary backend produced the caption)


class Captioner(abc.ABC):
    """Base interface: `describe` returns one `Caption` per image; `caption` keeps only the text."""

    name = "base"

    @abc.abstractmethod
    def describe(self, images: list, metas: list[dict] | None = None, prompts: list[str] | None = None
                 ) -> list[Caption]:
        """One `Caption` per image (see `caption` for the arguments)."""

    def caption(self, images: list, metas: list[dict] | None = None, prompts: list[str] | None = None
                ) -> list[str]:
        """Args: images: PIL images (or None for an unreadable one); metas: per-image source metadata (dicts);
        prompts: per-image full prompts overriding the configured one (LLaVA only). Returns: one caption each."""
        return [c.text for c in self.describe(images, metas, prompts)]


def _is_blank(value) -> bool:
    # Unsplash TSVs hold missing values as empty cells, which pandas turns into NaN and str() into "nan".
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return str(value).strip().lower() in ("", "nan", "none", "null")


class FixedCaptioner(Captioner):
    """The paper's fixed prompt for every image (no model, no metadata)."""

    name = "fixed"

    def __init__(self, cfg: CaptionConfig):
        self.text = cfg.fixed_caption

    def describe(self, images, metas=None, prompts=None):
        return [Caption(self.text, "fixed", "") for _ in images]


class MetadataCaptioner(Captioner):
    """The source's own description (Unsplash `photo_description`, then `ai_description` …), else the fixed text."""

    name = "metadata"

    def __init__(self, cfg: CaptionConfig):
        self.fields = cfg.metadata_fields
        self.fixed = cfg.fixed_caption

    def one(self, meta: dict | None, error: str = "") -> Caption:
        # A shard's `{key}.json` (dataset/shard.py) keeps the source's extra columns under "meta" and the source's
        # caption column under "caption"; flat dicts (other writers, tests) are read as they are.
        meta = meta or {}
        nested = meta.get("meta") if isinstance(meta.get("meta"), dict) else {}
        for field in self.fields:
            value = meta.get(field)
            if _is_blank(value):
                value = nested.get(field)
            if not _is_blank(value):
                return Caption(" ".join(str(value).split()), f"metadata:{field}", "", error)
        if not _is_blank(meta.get("caption")):
            return Caption(" ".join(str(meta["caption"]).split()), "metadata:caption", "", error)
        why = f"no non-empty metadata field among {list(self.fields)} (nor under 'meta', nor 'caption')"
        return Caption(self.fixed, "fixed", "", f"{error}; {why}" if error else why)

    def describe(self, images, metas=None, prompts=None):
        metas = metas if metas is not None else [None] * len(images)
        return [self.one(m) for m in metas]


def missing_model_message(path: str) -> str:
    return (
        f"LLaVA model directory {path!r} not found or incomplete (no config.json). Weights are never downloaded "
        f"by this code; fetch them once, e.g. `huggingface-cli download {DEFAULT_MODEL_ID} --local-dir "
        f"/models/llava-1.5-13b-hf` (about 26 GB, the paper's LLaVA-v1.5-13B), then pass that directory as "
        f"--model-path / CaptionConfig.model_path. For a CPU smoke run build a tiny random model with "
        f"`python -m captioning.tiny DIR`."
    )


def resolve_device_dtype(cfg: CaptionConfig):
    """(device, torch dtype): CUDA with fp16 (the paper's precision) when available, else CPU fp32 (G14)."""
    import torch

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.dtype == "auto":
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, cfg.dtype)
    return device, dtype


class LlavaCaptioner(Captioner):
    """LLaVA through transformers (`LlavaForConditionalGeneration` + `AutoProcessor`) from a local directory.

    Generation is batched: prompts are left-padded so every sequence ends at the same position and the new tokens
    of all rows line up (right padding would put pad tokens between a prompt and its answer).
    """

    name = "llava"

    def __init__(self, cfg: CaptionConfig):
        ensure_torchvision_importable()
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        path = Path(cfg.model_path) if cfg.model_path else None
        if path is None or not (path / "config.json").is_file():
            raise FileNotFoundError(missing_model_message(cfg.model_path))
        self.cfg = cfg
        self.device, self.dtype = resolve_device_dtype(cfg)
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        tok = self.processor.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:  # some LLaVA tokenizers ship without one; pads are masked out, any id works
            tok.pad_token = tok.unk_token or tok.eos_token
        self.model = LlavaForConditionalGeneration.from_pretrained(path, dtype=self.dtype, local_files_only=True)
        self.model.to(self.device).eval()
        self.source = f"llava:{path.resolve().name}"
        self.fallback = MetadataCaptioner(cfg)
        self._torch = torch

    def generate(self, images: list, prompts: list[str]) -> list[str]:
        """One batched `generate` call: RGB PIL images + full prompts -> decoded new text, stripped."""
        torch = self._torch
        inputs = self.processor(images=images, text=prompts, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        kwargs = dict(max_new_tokens=self.cfg.max_new_tokens, pad_token_id=self.processor.tokenizer.pad_token_id)
        if self.cfg.greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p)
        with torch.inference_mode():
            out_BT = self.model.generate(**inputs, **kwargs)  # (B, prompt_len + new_len)
        new_BN = out_BT[:, inputs["input_ids"].shape[1]:]  # left padding: every prompt ends at the same column
        return [t.strip() for t in self.processor.batch_decode(new_BN, skip_special_tokens=True)]

    def _generate_split(self, images: list, prompts: list[str]) -> list[str]:
        # CUDA OOM on a long batch: halve it and go on rather than lose the shard (a 13B model near the memory
        # limit fails only on the batches whose captions run long).
        try:
            return self.generate(images, prompts)
        except self._torch.cuda.OutOfMemoryError:
            if len(images) == 1:
                raise
            self._torch.cuda.empty_cache()
            half = len(images) // 2
            log.warning("CUDA OOM at batch %d; retrying as %d + %d", len(images), half, len(images) - half)
            return self._generate_split(images[:half], prompts[:half]) + \
                self._generate_split(images[half:], prompts[half:])

    def describe(self, images, metas=None, prompts=None):
        metas = metas if metas is not None else [None] * len(images)
        prompts = prompts if prompts is not None else [self.cfg.prompt()] * len(images)
        results: list[Caption | None] = [None] * len(images)
        todo = [i for i, im in enumerate(images) if im is not None]
        for i in set(range(len(images))) - set(todo):
            results[i] = self.fallback.one(metas[i], "image could not be decoded")
        for start in range(0, len(todo), self.cfg.batch_size):
            idx = todo[start:start + self.cfg.batch_size]
            texts = self._generate_split([images[i].convert("RGB") for i in idx], [prompts[i] for i in idx])
            for i, text in zip(idx, texts, strict=True):
                results[i] = Caption(text, self.source, prompts[i]) if text else \
                    self.fallback.one(metas[i], "LLaVA returned an empty caption")
        return results  # type: ignore[return-value]


def build_captioner(cfg: CaptionConfig) -> Captioner:
    """The captioner for `cfg.backend`; LLaVA loads its weights here (once per process / actor)."""
    return {"llava": LlavaCaptioner, "metadata": MetadataCaptioner, "fixed": FixedCaptioner}[cfg.backend](cfg)

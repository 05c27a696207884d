"""Text conditioning: the T5 encoder (flan-t5-xl in the release), packing to PackedText, and a caption cache.

Letters: B captions, N = sum of their token counts, T = encoder width (2048 for flan-t5-xl).

    enc = load_text_encoder("/models/flan-t5-xl")            # local dir: config.json, weights, tokenizer files
    text = enc.encode(["a photo of a cat"])                  # PackedText(features_NT, lens_B)
    enc = build_tiny_text_encoder()                          # tests/demo: tiny T5 + locally built tokenizer

Encoding follows the release (spec §1.2): max_length 512, padding to max_length, truncation; features are
`last_hidden_state.float()` and only the first `mask.sum()` rows of each caption are kept. Nothing is ever
downloaded: weights come from a user-given directory. (Being inside `nsarm`, importing this module has
already run the torchvision shim that transformers needs.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from nsarm.compat import ensure_torchvision_importable
from nsarm.transformer import PackedText

MAX_LENGTH = 512

# A small caption-like corpus the tiny tokenizer is trained on (deterministic: BPE training is order-stable).
_TINY_CORPUS = (
    "a photo of a cat sitting on a wooden table near the window",
    "a high-quality image with harmonious colors and rich details",
    "a close up of a flower with red petals and green leaves in the sunlight",
    "an astronaut riding a horse on the moon, digital art, sharp focus",
    "a city street at night with cars, buildings, people and bright lights",
    "a grey portrait of a man wearing a hat and a coat, black and white photo",
    "the image shows a landscape with mountains, a lake, trees and a blue sky with clouds",
    "describe this image and its style in a very detailed manner",
    "0 1 2 3 4 5 6 7 8 9 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"-()",
)


class TextEncoder:
    """A HF tokenizer + T5EncoderModel pair that turns captions into PackedText."""

    def __init__(self, tokenizer, model, encoder_id: str, max_length: int = MAX_LENGTH):
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.encoder_id = encoder_id  # names the cache folder; changes whenever the weights/tokenizer change
        self.max_length = max_length

    @property
    def width(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> PackedText:
        """Captions -> PackedText(features (N, T) fp32 on the encoder's device, lens (B,) long)."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions must be a sequence of strings")
        tok = self.tokenizer(
            list(captions), max_length=self.max_length, padding="max_length", truncation=True, return_tensors="pt"
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        feats_BLT = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        lens_B = mask.sum(dim=1).long()
        return PackedText(torch.cat([f[:n] for f, n in zip(feats_BLT, lens_B.tolist(), strict=True)]), lens_B.cpu())

    def save(self, directory: str | Path) -> Path:
        """Write a directory that `load_text_encoder` reads back (HF layout: config, weights, tokenizer files)."""
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory


def _dir_id(directory: Path, max_length: int) -> str:
    # the cache key must change when the weights or the tokenizer change: hash the config + tokenizer + weights index
    h = hashlib.sha256(str(max_length).encode())
    for name in ("config.json", "tokenizer.json", "spiece.model", "model.safetensors.index.json", "model.safetensors"):
        p = directory / name
        if p.is_file():
            h.update(name.encode())
            h.update(p.read_bytes() if p.stat().st_size < 64 << 20 else str(p.stat().st_size).encode())
    return f"{directory.name}-{h.hexdigest()[:12]}"


def load_text_encoder(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, max_length: int = MAX_LENGTH
) -> TextEncoder:
    """Load a T5 encoder + tokenizer from a local directory (e.g. a flan-t5-xl snapshot).

    Args:
        directory: folder with config.json, weights and tokenizer files. Nothing is downloaded.
        dtype: weight dtype; default fp16 on CUDA (as the release), fp32 on CPU.
    """
    ensure_torchvision_importable()
    from transformers import AutoTokenizer, T5EncoderModel

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"text encoder directory {directory} has no config.json (expected a T5 snapshot)")
    device = torch.device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory, legacy=True, local_files_only=True)
    model = T5EncoderModel.from_pretrained(directory, dtype=dtype, local_files_only=True).to(device)
    return TextEncoder(tokenizer, model, _dir_id(directory, max_length), max_length)


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on a built-in corpus, with T5's special ids (pad 0, </s> 1, <unk> 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False)
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # T5 appends EOS
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny_text_encoder(d_model: int = 64, seed: int = 0, max_length: int = MAX_LENGTH) -> TextEncoder:
    """A 2-layer T5 encoder with random (seeded, reproducible) weights and a locally built tokenizer."""
    ensure_torchvision_importable()
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_tiny_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=2, num_heads=d_model // 16,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config)
    return TextEncoder(tokenizer, model, f"tiny-t5-d{d_model}-s{seed}-L{max_length}", max_length)


class CaptionCache:
    """On-disk cache of caption features: {root}/{encoder_id}/{sha[:2]}/{sha}.safetensors, one file per caption.

    Keyed by (encoder id, sha256 of the caption), so a cache is never read with a different encoder. Writes go to a
    temp name then rename (safe with several data-loader workers).
    """

    def __init__(self, root: str | Path, encoder_id: str):
        self.dir = Path(root) / encoder_id

    def path(self, caption: str) -> Path:
        h = hashlib.sha256(caption.encode("utf-8")).hexdigest()
        return self.dir / h[:2] / f"{h}.safetensors"

    def get(self, caption: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        p = self.path(caption)
        return load_file(p)["features"] if p.is_file() else None

    def put(self, caption: str, features_LT: torch.Tensor) -> None:
        from safetensors.torch import save_file

        p = self.path(caption)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{id(features_LT)}")
        save_file({"features": features_LT.detach().cpu().contiguous()}, str(tmp), metadata={"caption": json.dumps(caption)[:1000]})
        tmp.replace(p)


def encode_cached(encoder: TextEncoder, captions: Sequence[str], cache: CaptionCache | None) -> PackedText:
    """Like `encoder.encode`, reading/writing per-caption features through `cache` (None = no cache)."""
    if cache is None:
        return encoder.encode(captions)
    found = {c: cache.get(c) for c in set(captions)}
    missing = [c for c, f in found.items() if f is None]
    if missing:
        packed = encoder.encode(missing)
        start = 0
        for c, n in zip(missing, packed.lens_B.tolist(), strict=True):
            found[c] = packed.features_NT[start : start + n].cpu()
            cache.put(c, found[c])
            start += n
    feats = [found[c] for c in captions]
    return PackedText(torch.cat(feats).to(encoder.device), torch.tensor([f.shape[0] for f in feats]))

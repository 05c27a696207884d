"""A tiny, randomly initialised LLaVA (CLIP-ViT + Llama) with a locally trained tokenizer, saved like a hub checkpoint.

Tests, the benchmark and the CPU demo load it through exactly the code path the real `llava-hf/llava-1.5-13b-hf`
uses (`AutoProcessor` + `LlavaForConditionalGeneration.from_pretrained(dir)`), without any download:

    python -m captioning.tiny OUT_DIR        # writes config.json, model.safetensors, tokenizer and processor files

Its captions are random words from the tokenizer's small vocabulary: it exercises batching, padding and the file
contract, not caption quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nsarm.compat import ensure_torchvision_importable

# Text the BPE tokenizer is trained on: the paper's question, the prompt template words and some caption
# vocabulary, so prompts tokenize into a handful of word-piece tokens and decoded captions read as words.
_CORPUS = (
    "USER: ASSISTANT: Describe this image and its style in a very detailed manner.",
    "A high-quality image with harmonious colors and rich details.",
    "The image shows a cat sitting on a wooden table next to a cup of coffee in warm morning light.",
    "An astronaut in a white space suit stands in front of the American flag, photographed in a realistic style.",
    "A red motorcycle parked on a grey street; the photograph is sharp, colourful and evenly lit.",
    "A rocket launches into a blue sky with clouds of smoke, captured as a dramatic documentary photo.",
    "Deep space full of distant galaxies, stars and nebulae in black, orange and blue tones.",
    "A black and white photo of a man with a camera on a tripod in a grassy field.",
    "Close-up texture of gravel, grass and stone with fine grain and soft natural shadows.",
)

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")

# Vision tower geometry: 32x32 images in 8x8 patches -> 16 patch features (+1 CLS dropped by the "default" strategy),
# so every prompt carries 16 <image> tokens, as llava-1.5 carries 576 for 336x336 in 14x14 patches.
IMAGE_SIZE, PATCH_SIZE = 32, 8


def build_tokenizer(vocab_size: int = 320):
    """Train a small BPE tokenizer on `_CORPUS` and wrap it as a left-padding `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # SentencePiece-style word boundaries (as Llama's tokenizer): random token sequences decode to word pieces.
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(list(_CORPUS), trainer=trainer)
    # Llama prepends BOS to every sequence; keep that so prompt lengths behave like the real checkpoint's.
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        padding_side="left",
    )


def build_tiny_llava(out_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Build and `save_pretrained` a tiny random LLaVA + tokenizer + `LlavaProcessor` into `out_dir`.

    Args:
        out_dir: directory to create (or overwrite); afterwards it loads with `AutoProcessor.from_pretrained` and
            `LlavaForConditionalGeneration.from_pretrained`.
        seed: torch seed for the random weights (same seed -> same weights -> same greedy captions).
        hidden, layers: width and depth of both towers (tiny: the model has well under 1M parameters).

    Returns:
        The directory as a Path.
    """
    ensure_torchvision_importable()  # transformers' image processors import torchvision
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        # A wider init than the default 0.02 separates the top logits, so greedy decoding is not decided by
        # float rounding (the batched-vs-single equivalence test relies on clear argmaxes, as a trained model has).
        initializer_range=0.5,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2, vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    # "default" strategy drops the CLS feature, so 1 additional token cancels (see machine-recipes pitfall).
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        num_additional_image_tokens=1, vision_feature_select_strategy="default",
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def photo_jpeg(path: str | Path, size: int = 256, quality: int = 95) -> bytes:
    """A photo centre-cropped to a square and resized to `size`², as RGB JPEG bytes (a small stand-in for the
    shard stage's 1024² images)."""
    import io

    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.fit(im.convert("RGB"), (size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_hr_shard(root: str, shard: int, samples: list[tuple[str, bytes, dict]]) -> None:
    """Write `{root}/hr/{shard:06d}.tar` ({key}.jpg + {key}.json) and its `_stats.json` done marker, following
    docs/DESIGN.md §3, for tests and demos that run before (or without) the dataset stage's shard writer."""
    import hashlib
    import json

    from dataset import contract

    members = [(key, {"jpg": jpg, "json": json.dumps(meta).encode()}) for key, jpg, meta in samples]
    data = contract.tar_bytes(members)
    contract.put_atomic(contract.hr_tar(root, shard), data)
    contract.write_json_atomic(contract.hr_stats(root, shard), {"shard": shard, "n": len(samples), "ok": len(samples),
                                                               "tar_sha256": hashlib.sha256(data).hexdigest()})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m captioning.tiny OUT_DIR")
    print(build_tiny_llava(sys.argv[1]))

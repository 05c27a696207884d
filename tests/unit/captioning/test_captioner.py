"""Captioner backends: LLaVA batched == one-at-a-time (greedy, left padding), fallbacks, metadata and fixed."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from captioning.captioner import FixedCaptioner, LlavaCaptioner, MetadataCaptioner, build_captioner
from captioning.config import FIXED_CAPTION, CaptionConfig


def _images(photo_samples, n):
    return [Image.open(io.BytesIO(jpg)).convert("RGB") for _, jpg, _ in photo_samples[:n]]


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    return LlavaCaptioner(CaptionConfig(model_path=str(tiny_llava_dir), greedy=True, max_new_tokens=10, batch_size=4))


def test_batched_greedy_equals_one_at_a_time(llava, photo_samples, tiny_llava_dir):
    images = _images(photo_samples, 6)
    # Prompts of different lengths, so the batch really is left-padded (equal prompts would need no padding).
    questions = ["Describe this image.", "Describe this image and its style in a very detailed manner.", "A cat?",
                 "Describe", "What colors and style does this photo have, in detail?", "Style?"]
    prompts = [f"USER: <image>\n{q} ASSISTANT:" for q in questions]
    lengths = {len(llava.processor.tokenizer(p).input_ids) for p in prompts}
    assert len(lengths) > 3

    batched = llava.caption(images, prompts=prompts)  # batches of 4 + 2
    single = [llava.caption([im], prompts=[p])[0] for im, p in zip(images, prompts, strict=True)]
    assert batched == single
    assert all(batched) and len(set(batched)) == len(batched)  # non-empty, and they depend on image/prompt

    same_prompt = llava.describe(images[:3])
    assert [c.prompt for c in same_prompt] == [CaptionConfig().prompt()] * 3
    assert {c.source for c in same_prompt} == {f"llava:{tiny_llava_dir.name}"}


def test_llava_falls_back_to_metadata_for_unreadable_images(llava, photo_samples):
    images = _images(photo_samples, 2)
    metas = [{"photo_description": "a cat on a sofa"}, {"photo_description": "a rocket"}]
    caps = llava.describe([images[0], None], metas)
    assert caps[0].source.startswith("llava:") and caps[0].error == ""
    assert (caps[1].text, caps[1].source, caps[1].error) == ("a rocket", "metadata:photo_description",
                                                             "image could not be decoded")


def test_metadata_backend_walks_its_fields_then_falls_back_to_fixed():
    cap = MetadataCaptioner(CaptionConfig(backend="metadata"))
    metas = [
        {"photo_description": "  A  red\n motorcycle ", "ai_description": "bike"},
        {"photo_description": "", "ai_description": "a grey street"},
        {"photo_description": float("nan"), "description": None, "ai_description": "nan", "alt_description": ""},
        None,
    ]
    out = cap.describe([None] * 4, metas)
    assert [c.text for c in out] == ["A red motorcycle", "a grey street", FIXED_CAPTION, FIXED_CAPTION]
    assert [c.source for c in out] == ["metadata:photo_description", "metadata:ai_description", "fixed", "fixed"]
    assert out[0].error == "" and "no non-empty metadata field" in out[2].error
    assert cap.caption([None], [{"ai_description": "x"}]) == ["x"]


def test_fixed_backend_and_factory():
    assert isinstance(build_captioner(CaptionConfig(backend="fixed")), FixedCaptioner)
    assert FixedCaptioner(CaptionConfig(backend="fixed")).caption([None, None]) == [FIXED_CAPTION] * 2
    custom = FixedCaptioner(CaptionConfig(backend="fixed", fixed_caption="a photo"))
    assert custom.describe([None])[0].source == "fixed" and custom.caption([None]) == ["a photo"]


def test_missing_model_dir_names_the_path_and_how_to_get_weights(tmp_path):
    missing = tmp_path / "no-such-llava"
    with pytest.raises(FileNotFoundError) as err:
        build_captioner(CaptionConfig(model_path=str(missing)))
    msg = str(err.value)
    assert str(missing) in msg and "llava-hf/llava-1.5-13b-hf" in msg and "huggingface-cli download" in msg
    with pytest.raises(FileNotFoundError, match="python -m captioning.tiny"):
        build_captioner(CaptionConfig())  # no model_path at all

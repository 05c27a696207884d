"""CaptionConfig: paper defaults, validation with clear errors, and a hash that tracks only caption-relevant fields."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from captioning.config import PRESETS, CaptionConfig, cap_hash, caption_config


def test_defaults_are_the_papers():
    cfg = CaptionConfig()
    assert cfg.question == "Describe this image and its style in a very detailed manner."
    assert (cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.greedy) == (0.2, 0.7, 512, False)
    assert cfg.prompt() == "USER: <image>\nDescribe this image and its style in a very detailed manner. ASSISTANT:"
    assert CaptionConfig(backend="fixed").fixed_caption == "A high-quality image with harmonious colors and rich details."
    assert cfg.generation_params() == {"do_sample": True, "temperature": 0.2, "top_p": 0.7, "max_new_tokens": 512,
                                       "seed": 0}
    assert CaptionConfig(backend="metadata").generation_params() == {}


@pytest.mark.parametrize("kwargs, needle", [
    ({"backend": "blip"}, "backend='blip'"),
    ({"image": "mr"}, "image='mr'"),
    ({"image": "lr"}, "deg_hash"),
    ({"dtype": "int8"}, "dtype='int8'"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"prompt_template": "{question}"}, "<image>"),
    ({"temperature": 0.0}, "temperature > 0"),
])
def test_bad_fields_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=None) as err:
        CaptionConfig(**kwargs)
    assert needle in str(err.value)


def test_hash_ignores_throughput_knobs_and_mount_point_but_not_caption_fields():
    base = CaptionConfig(model_path="/models/llava-1.5-13b-hf")
    h = cap_hash(base)
    assert len(h) == 12 and h == cap_hash(CaptionConfig(model_path="/models/llava-1.5-13b-hf"))
    assert cap_hash(replace(base, batch_size=64, device="cpu")) == h
    assert cap_hash(replace(base, model_path="/mnt/other/llava-1.5-13b-hf/")) == h
    for change in ({"question": "What is this?"}, {"greedy": True}, {"temperature": 0.3}, {"image": "lr", "deg_hash": "ab"},
                   {"model_path": "/models/llava-1.5-7b-hf"}, {"backend": "metadata"}, {"seed": 1}):
        assert cap_hash(replace(base, **change)) != h, change


def test_config_round_trips_through_its_json_form_and_presets():
    cfg = replace(PRESETS["greedy"], metadata_fields=("ai_description",), batch_size=3)
    import json

    assert CaptionConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg
    with pytest.raises(ValueError, match=r"unknown CaptionConfig field\(s\) \['colour'\]"):
        CaptionConfig.from_dict({"backend": "fixed", "colour": 1})
    assert caption_config("fixed", batch_size=None).backend == "fixed"
    assert caption_config("paper", model_path="/m").model_path == "/m"
    with pytest.raises(ValueError, match="unknown caption preset 'nope'"):
        caption_config("nope")

"""One loader (nsarm/loading.py) behind training, `nsarm upscale` / `nsarm eval` and the held-out evaluation: equal
arguments give equal models and text encoders, and a model without its text encoder is an error naming it, never a
random stand-in (the held-out evaluation used to fall back to the tiny T5 for any model)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nsarm import loading
from nsarm.checkpoints import save_checkpoint
from nsarm.eval.holdout import evaluate_export, load_export
from nsarm.inference import make_upscale_fn
from nsarm.inference_cli import UpscaleError, build_upscale_fn
from nsarm.model import MODEL_PRESETS, build_model, model_config
from nsarm.text import build_tiny_text_encoder
from nsarm.tokenizer import save_tokenizer
from nsarm.train.config import train_config
from nsarm.train.loop import build_models


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in sa.items())


def _features(enc, caption="a red boat on a lake"):
    return enc.encode([caption]).features_NT


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A tiny checkpoint directory in our format with its (seeded tiny T5) text encoder, as training exports it."""
    torch.manual_seed(5)
    model = build_model("tiny").eval()
    d = tmp_path_factory.mktemp("export") / "tiny"
    save_checkpoint(model, d, text_encoder=build_tiny_text_encoder(d_model=model.cfg.transformer.text_channels))
    return d, model


def test_training_upscale_and_evaluation_load_the_same_model(tiny_export, sample_photos):
    path, ref = tiny_export
    trained, t_enc = build_models(train_config("tiny", 2, init_from=str(path), image_every=0), torch.device("cpu"))
    evaluated, e_enc = load_export(str(path))  # the train-nsarm flow's evaluate step
    assert _same_weights(trained, ref) and _same_weights(evaluated, ref)
    assert torch.equal(_features(t_enc), _features(e_enc))
    # `nsarm upscale --checkpoint` / `nsarm eval` (build_upscale_fn) hide their model: same weights, same pixels
    from PIL import Image

    lr = np.asarray(Image.open(sample_photos[0].path).convert("RGB").resize((64, 64), Image.BICUBIC))
    served = build_upscale_fn(path, device="cpu", seed=2)([lr], ["a photo"])[0]
    assert served.shape == (256, 256, 3)
    for model, enc in ((trained, t_enc), (evaluated, e_enc)):
        assert np.array_equal(make_upscale_fn(model.eval(), enc, seed=2)([lr], ["a photo"])[0], served)


def test_official_weights_load_alike_for_training_and_inference(tmp_path):
    torch.manual_seed(3)
    ref = build_model("tiny")
    torch.save(ref.official_state_dict(), tmp_path / "NSARM.pth")
    torch.save(ref.transformer.state_dict(), tmp_path / "infinity.pth")
    save_tokenizer(ref.tokenizer, tmp_path / "tok.safetensors")
    args = dict(init_from=str(tmp_path / "NSARM.pth"), tokenizer_path=str(tmp_path / "tok.safetensors"))
    trained, _ = build_models(train_config("tiny", 2, image_every=0, **args), torch.device("cpu"))
    served, _ = loading.load_for_upscaling("tiny", args["init_from"], args["tokenizer_path"], device="cpu")
    assert _same_weights(trained, ref) and _same_weights(served, ref)
    # Infinity weights (no map_transformer.*) start training with a fresh map net; inference refuses them by name
    with pytest.raises(loading.LoadError, match="--checkpoint .*infinity.pth holds no map_transformer"):
        loading.load_for_upscaling("tiny", tmp_path / "infinity.pth", tmp_path / "tok.safetensors", device="cpu",
                                   names=loading.CLI_NAMES)


def test_the_tiny_t5_is_the_named_choice_of_a_tiny_config_only(tmp_path):
    tiny = model_config("tiny")
    assert tiny.text_encoder == loading.TINY_T5
    assert loading.text_encoder_source(tiny) is None  # None = build the seeded tiny T5
    enc = loading.load_text_encoder(tiny)
    assert enc.encoder_id.startswith("tiny-t5-d64") and enc.width == tiny.transformer.text_channels
    flan = dataclasses.replace(tiny, name="tiny-flan", text_encoder="flan-t5-xl")
    with pytest.raises(loading.LoadError, match="'tiny-flan' needs text_encoder_path .*flan-t5-xl"):
        loading.load_text_encoder(flan)
    with pytest.raises(loading.LoadError, match="text_encoder_path .*missing-t5: text encoder directory not found"):
        loading.load_text_encoder(tiny, tmp_path / "missing-t5")


@pytest.fixture()
def flan_export(tmp_path):
    """The tiny architecture declared with flan-t5-xl as its text encoder (as nsarm-8b), saved without one."""
    cfg = dataclasses.replace(MODEL_PRESETS["tiny"], name="tiny-flan", text_encoder="flan-t5-xl")
    torch.manual_seed(1)
    return save_checkpoint(build_model(cfg), tmp_path / "flan")


def test_a_missing_text_encoder_is_an_error_not_a_random_stand_in(flan_export, train_root, tmp_path):
    out = tmp_path / "eval"
    with pytest.raises(loading.LoadError, match="'tiny-flan' needs text_encoder_path"):
        evaluate_export(str(flan_export), train_root["root"], 2, str(out))
    assert not out.exists()  # failed before writing the test set
    with pytest.raises(UpscaleError, match="needs --text-encoder"):
        build_upscale_fn(flan_export, device="cpu")

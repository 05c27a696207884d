"""Stage initialisation from official-layout weights: NSARM.pth fills everything, an Infinity checkpoint fills the
transformer and leaves a fresh transformation network (the paper's stage-1 start); the tokenizer is frozen."""

from __future__ import annotations

import pytest
import torch

from nsarm.model import build_model
from nsarm.tokenizer import save_tokenizer
from nsarm.train.config import train_config
from nsarm.train.loop import build_models


def _same(a, b) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_init_from_official_layouts(tmp_path):
    torch.manual_seed(3)
    ref = build_model("tiny")
    torch.save(ref.transformer.state_dict(), tmp_path / "infinity.pth")
    torch.save(ref.official_state_dict(), tmp_path / "nsarm.pth")
    save_tokenizer(ref.tokenizer, tmp_path / "tok.safetensors")
    tok = str(tmp_path / "tok.safetensors")

    m, _ = build_models(train_config("tiny", 1, init_from=str(tmp_path / "nsarm.pth"), tokenizer_path=tok,
                                     image_every=0), torch.device("cpu"))
    assert _same(m.transformer, ref.transformer) and _same(m.map_transformer, ref.map_transformer)
    assert _same(m.tokenizer, ref.tokenizer) and not any(p.requires_grad for p in m.tokenizer.parameters())
    assert not any(p.requires_grad for p in m.transformer.parameters())  # stage 1: map net only

    m, _ = build_models(train_config("tiny", 2, init_from=str(tmp_path / "infinity.pth"), tokenizer_path=tok,
                                     image_every=0), torch.device("cpu"))
    assert _same(m.transformer, ref.transformer) and not _same(m.map_transformer, ref.map_transformer)
    assert all(p.requires_grad for p in m.transformer.parameters())

    with pytest.raises(ValueError, match="tokenizer_path"):
        build_models(train_config("tiny", 1, init_from=str(tmp_path / "nsarm.pth")), torch.device("cpu"))

"""NSARM transformation network: released key layout and size (meta device), tiny forward, the raw-reshape quirk."""

from __future__ import annotations

import pytest
import torch

from nsarm.transform_net import TRANSFORM_NET_PRESETS, TransformNet, flatten_target


def test_nsarm_8b_keys_and_params_on_meta():
    with torch.device("meta"):
        net = TransformNet(TRANSFORM_NET_PRESETS["nsarm-8b"])
    sd = net.state_dict()
    assert len(sd) == 950
    assert sum(v.numel() for v in sd.values()) == 385_103_600
    per_scale = [sum(p.numel() for p in t.parameters()) for t in net.transformers]
    assert [round(n / 1e6, 2) for n in per_scale] == [0.2, 1.19, 6.32, 17.74, 37.83, 99.23, 201.54]
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["feature_extractor.1.weight"] == (64, 32, 32)
    assert shapes["feature_extractor.6.weight"] == (14, 128, 3, 3)
    assert shapes["feature_transforms.6.4.weight"] == (1024, 32, 32)
    assert shapes["transformers.6.layers.15.self_attn.in_proj_weight"] == (3072, 1024)
    assert shapes["transformers.0.layers.3.linear1.weight"] == (256, 64)
    assert shapes["transformers.3.layers.9.norm2.bias"] == (384,)
    assert shapes["output_projs.5.3.weight"] == (14, 384)
    assert "transformers.0.layers.4.norm1.weight" not in shapes


def test_tiny_outputs_one_residual_per_scale_and_rejects_wrong_lr_size():
    torch.manual_seed(0)
    net = TransformNet(TRANSFORM_NET_PRESETS["tiny"]).eval()
    outs = net(torch.randn(2, 8, 8, 8))
    assert [tuple(o.shape) for o in outs] == [(2, 8, s, s) for s in (2, 4, 8, 12)]
    assert all(torch.isfinite(o).all() for o in outs)
    with pytest.raises(ValueError, match="LR latent"):
        net(torch.randn(1, 8, 16, 16))


def test_output_uses_raw_reshape_not_permute():
    torch.manual_seed(0)
    net = TransformNet(TRANSFORM_NET_PRESETS["tiny"]).eval()
    captured = []
    net.output_projs[1].register_forward_hook(lambda m, i, o: captured.append(o))
    out = net(torch.randn(1, 8, 8, 8))[1]  # (1, 8, 4, 4)
    seq_Bsd = captured[0]  # (1, 16, 8)
    assert torch.equal(out, seq_Bsd.reshape(1, 8, 4, 4))  # memory reinterpretation, as released
    assert not torch.equal(out, seq_Bsd.transpose(1, 2).reshape(1, 8, 4, 4))
    assert torch.equal(flatten_target(out), seq_Bsd)  # targets flattened the same way give back the sequence

"""Export to object storage (a real moto S3 server): the consolidated checkpoint, the official layout and
export.json land under the s3:// prefix, and the recorded sha256 verifies (and catches a changed file)."""

from __future__ import annotations

import io

import fsspec
import pytest
import torch

pytestmark = pytest.mark.integration


def test_export_to_s3_and_verify(s3_bucket):
    from nsarm.model import build_model
    from nsarm.text import build_tiny_text_encoder
    from nsarm.train.export import export_model, read_export_info, verify_export

    torch.manual_seed(0)
    model = build_model("tiny")
    uri = f"{s3_bucket}/runs/tiny-stage2/export"
    info = export_model(model, uri, text_encoder=build_tiny_text_encoder(64), extra={"step": 3})
    assert read_export_info(uri) == {**info, "step": 3}
    assert verify_export(uri)["sha256"] == info["sha256"]
    fs, path = fsspec.core.url_to_fs(uri)
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    assert {"model.safetensors", "config.json", "nsarm_official.pth", "export.json", "text_encoder"} <= names
    official = torch.load(io.BytesIO(fs.cat_file(f"{path}/nsarm_official.pth")), weights_only=True)
    assert set(official) == set(model.official_state_dict())
    fs.pipe_file(f"{path}/model.safetensors", b"changed")
    with pytest.raises(ValueError, match="sha256"):
        verify_export(uri)

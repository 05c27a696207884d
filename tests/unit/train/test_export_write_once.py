"""Exports are write-once (issue #21 item 1) and `fetch_export` names the file that is missing or changed (#20)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from nsarm.model import build_model
    from nsarm.text import build_tiny_text_encoder
    from nsarm.train.export import export_model

    torch.manual_seed(0)
    uri = str(tmp_path_factory.mktemp("exports") / "step000003-abc")
    return export_model(build_model("tiny"), uri, text_encoder=build_tiny_text_encoder(64), extra={"step": 3})


def test_an_existing_export_is_never_rewritten(exported, tmp_path):
    from pathlib import Path

    from nsarm.model import build_model
    from nsarm.train.export import export_model

    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(exported["uri"]).rglob("*") if p.is_file()}
    torch.manual_seed(1)  # other weights: a rewrite would change the bytes
    again = export_model(build_model("tiny"), exported["uri"], extra={"step": 4})
    assert again == exported
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(exported["uri"]).rglob("*") if p.is_file()} == files


def test_fetch_export_checks_every_loadable_file(exported, tmp_path):
    import shutil

    from nsarm.train.export import ExportError, fetch_export, loadable_files

    files = loadable_files(exported["uri"])
    assert files["model.safetensors"] == exported["sha256"] and "text_encoder/config.json" in files
    assert "nsarm_official.pth" not in files and "export.json" not in files
    copy = tmp_path / "copy"
    shutil.copytree(exported["uri"], copy)
    assert fetch_export(str(copy), files, tmp_path / "cache") == copy
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(ExportError, match=f"{copy}/config.json: sha256 .* differs from the recorded"):
        fetch_export(str(copy), files, tmp_path / "cache")
    (copy / "model.safetensors").unlink()
    with pytest.raises(ExportError, match=f"{copy}/model.safetensors: missing"):
        fetch_export(str(copy), {"model.safetensors": files["model.safetensors"]}, tmp_path / "cache")

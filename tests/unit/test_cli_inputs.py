"""Every `nsarm` data/eval command checks its inputs first (issue 21.6): a mistake gives exit status 2 and one
stderr line naming the input, with no traceback and nothing created (no folders under a mistyped root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nsarm.cli import main


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def _fails_cleanly(argv: list[str], capsys, *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"nsarm {argv[0]}: error: ")
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def built_root(sample_photos, tmp_path_factory) -> Path:
    """Two finished tiny HR shards of real photos (in this process, no Ray)."""
    root = tmp_path_factory.mktemp("ds") / "root"
    source = str(sample_photos[0].path.parent)
    assert main(["shard", source, str(root), "--preset", "tiny", "--limit", "4", "--shard-size", "2"]) == 0
    return root


def test_shard_on_a_missing_source(tmp_path, capsys):
    missing, root = tmp_path / "photos.tsv", tmp_path / "root"
    _fails_cleanly(["shard", str(missing), str(root), "--preset", "tiny"], capsys, "source", str(missing))
    assert not root.exists()


def test_shard_on_a_source_of_unknown_kind(tmp_path, capsys):
    odd = tmp_path / "photos.xlsx"
    odd.write_text("not a source list")
    _fails_cleanly(["shard", str(odd), str(tmp_path / "root")], capsys, str(odd))
    assert _tree(tmp_path) == ["photos.xlsx"]


@pytest.mark.parametrize("command", [["degrade"], ["caption", "--backend", "metadata"]])
def test_a_mistyped_root_creates_nothing(tmp_path, capsys, command):
    typo = tmp_path / "dataset-typo"
    _fails_cleanly([command[0], str(typo), *command[1:]], capsys, "dataset root", str(typo), "does not exist")
    assert not typo.exists()


@pytest.mark.parametrize("command", [["degrade"], ["caption", "--backend", "metadata"]])
def test_a_root_without_hr_shards_creates_nothing(tmp_path, capsys, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails_cleanly([command[0], str(empty), *command[1:]], capsys, "no finished HR shards")
    assert _tree(empty) == []


def test_degrade_names_shards_that_are_not_built(built_root, capsys):
    before = _tree(built_root)
    _fails_cleanly(["degrade", str(built_root), "--shards", "0,7"], capsys, "--shards 7", "done: 0,1")
    assert _tree(built_root) == before


def test_caption_llava_without_its_model_stops_before_any_actor(built_root, tmp_path, capsys):
    before = _tree(built_root)
    _fails_cleanly(["caption", str(built_root), "--model-path", str(tmp_path / "llava")], capsys, "--model-path",
                   "llava")
    _fails_cleanly(["caption", str(built_root), "--backend", "metadata", "--image", "lr"], capsys, "deg_hash")
    assert _tree(built_root) == before


def test_eval_checks_its_paths_before_creating_the_report_folder(tmp_path, capsys):
    out = tmp_path / "report"
    _fails_cleanly(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--lr-dir", str(tmp_path), "--out", str(out)],
                   capsys, "--checkpoint", "does not exist")
    _fails_cleanly(["eval", "--sr-dir", str(tmp_path), "--hr-dir", str(tmp_path / "HR"), "--out", str(out)],
                   capsys, "--hr-dir")
    assert not out.exists()


def test_upscale_8b_without_text_encoder_fails_before_loading_weights(tmp_path, capsys):
    """The official checkpoint here is garbage: the old order (load 8B, then look for T5) failed inside the
    loader; the check must come first, from the preset alone."""
    photo, ckpt, vae = tmp_path / "lr.png", tmp_path / "NSARM.pth", tmp_path / "vae.pth"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(photo)
    ckpt.write_bytes(os.urandom(64))
    vae.write_bytes(os.urandom(64))
    _fails_cleanly(["upscale", str(photo), str(tmp_path / "sr.png"), "--checkpoint", str(ckpt), "--tokenizer",
                    str(vae), "--preset", "nsarm-8b"], capsys, "needs --text-encoder")
    _fails_cleanly(["upscale", str(photo), str(tmp_path / "sr.png"), "--checkpoint", str(ckpt), "--tokenizer",
                    str(vae), "--preset", "nsarm-9b"], capsys, "--preset", "nsarm-9b")
    assert not (tmp_path / "sr.png").exists()

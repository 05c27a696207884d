"""`nsarm caption` end to end in-process: parses flags into a CaptionConfig and writes the caption files."""

from __future__ import annotations

import json

from captioning.config import CaptionConfig, cap_hash
from captioning.worker import read_captions
from nsarm.cli import main


def test_caption_command_metadata_backend(caption_root, photo_samples, capsys):
    assert main(["caption", caption_root, "--backend", "metadata", "--shards", "0,2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    h = cap_hash(CaptionConfig(backend="metadata"))
    assert summary["version"] == h and summary["shards_total"] == 2 and summary["new_samples"] == 8
    caps = read_captions(caption_root, h, 2)
    assert list(caps) == [k for k, _, _ in photo_samples[8:12]]
    assert caps[photo_samples[10][0]] == photo_samples[10][2]["ai_description"]  # blank description fell back


def test_caption_command_tiny_llava_and_failure_exit_code(caption_root, tiny_llava_dir, capsys):
    argv = ["caption", caption_root, "--model-path", str(tiny_llava_dir), "--greedy", "--max-new-tokens", "4",
            "--shards", "1"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    cfg = CaptionConfig(model_path=str(tiny_llava_dir), greedy=True, max_new_tokens=4)
    assert summary["version"] == cap_hash(cfg) and summary["new_samples"] == 4
    # no such shard: refused before any work, naming it (tests/unit/test_cli_inputs.py has the other inputs)
    assert main(["caption", caption_root, "--backend", "fixed", "--shards", "9"]) == 2
    assert "--shards 9: not finished HR shards" in capsys.readouterr().err

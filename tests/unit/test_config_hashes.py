"""Config hashes name folders and check files on disk: `hr/config.json` and every `_stats.json` (shard),
`lr/<deg_hash>/` (degradation), `captions/<cap_hash>/` (captioning) and `export/step…-<hash>` (training). Every
preset's hash is pinned at the value the code gave before the stages shared one hash function (issue 18.5), so an
existing dataset or run directory keeps resolving after any refactor of how the hash is computed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from captioning.config import PRESETS as CAPTION_PRESETS
from captioning.config import cap_hash
from dataset.config import PRESETS as SHARD_PRESETS
from dataset.config import config_hash
from degradation.config import PRESETS as DEG_PRESETS
from degradation.config import deg_hash
from nsarm.train.config import train_config
from nsarm.train.ray_trainer import export_name

SHARD = {"paper": "5497b91344cf", "tiny": "6e875e3b7c56"}
DEGRADATION = {"realesrgan": "f55431955739-s0", "nsarm-light": "e1b09949aa9b-s0", "seesr": "a230aae27796-s0",
               "pisasr": "a230aae27796-s0"}
CAPTION = {"paper": "9229485c5e29", "greedy": "491ec76cb8d3", "metadata": "508184e95841", "fixed": "3231aaabe2eb"}
EXPORT = {("tiny", 1): "step000060-a32331ea", ("tiny", 2): "step000060-aee65148",
          ("nsarm-8b-16gpu", 1): "step100000-ee96e197", ("nsarm-8b-16gpu", 2): "step040000-b918a7de"}


@pytest.mark.parametrize("name", sorted(SHARD))
def test_shard_config_hash_is_pinned(name):
    assert config_hash(SHARD_PRESETS[name]) == SHARD[name]
    assert config_hash(SHARD_PRESETS[name].override(threads=3, retries=0)) == SHARD[name]  # speed knobs stay out


@pytest.mark.parametrize("name", sorted(DEGRADATION))
def test_degradation_folder_name_is_pinned(name):
    assert deg_hash(DEG_PRESETS[name], 0) == DEGRADATION[name]


def test_degradation_added_fields_enter_the_hash_only_off_their_default():
    assert replace(DEG_PRESETS["nsarm-light"], second_order=True).hash() == "0898e8a7bc93"


@pytest.mark.parametrize("name", sorted(CAPTION))
def test_caption_folder_name_is_pinned(name):
    assert cap_hash(CAPTION_PRESETS[name]) == CAPTION[name]


def test_caption_hash_of_a_model_dir_and_of_lr_captions_is_pinned():
    assert cap_hash(replace(CAPTION_PRESETS["paper"], model_path="/models/llava-1.5-13b-hf/")) == "d3843d1d8f35"
    assert cap_hash(replace(CAPTION_PRESETS["fixed"], image="lr", deg_hash="f55431955739-s0")) == "7e0cb4e7458e"


@pytest.mark.parametrize("preset, stage", sorted(EXPORT))
def test_training_export_name_is_pinned(preset, stage):
    assert export_name(train_config(preset, stage)) == EXPORT[(preset, stage)]

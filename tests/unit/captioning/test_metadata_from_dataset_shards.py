"""The metadata captioner reads the `{key}.json` that the dataset's shard writer really produces (source columns
nested under "meta", the source caption column as "caption") — found missing by the build-dataset e2e run."""

from __future__ import annotations

import json

from captioning.captioner import MetadataCaptioner
from captioning.config import caption_config
from dataset.config import PRESETS
from dataset.contract import hr_tar, iter_tar_samples
from dataset.shard import ShardBuilder
from dataset.sources import SourceRow, plan_shards


def test_metadata_captions_come_from_real_shard_json(sample_photos, tmp_path):
    root = str(tmp_path / "root")
    rows = [SourceRow(str(p.path), p.photo_id, "", {"photo_description": f"desc of {p.photo_id}",
                                                      "ai_description": "ai text"}, origin="file")
            for p in sample_photos[:2]]
    rows.append(SourceRow(str(sample_photos[2].path), sample_photos[2].photo_id, "table caption", {},
                          origin="file"))
    spec, = plan_shards(rows, 10)
    assert ShardBuilder(PRESETS["tiny"], root)(spec).ok
    cap = MetadataCaptioner(caption_config("metadata"))
    metas = {key: json.loads(files["json"]) for key, files, _ in iter_tar_samples(hr_tar(root, 0))}
    got = {key: cap.one(m) for key, m in metas.items()}
    assert got[sample_photos[0].photo_id].text == f"desc of {sample_photos[0].photo_id}"
    assert got[sample_photos[0].photo_id].source == "metadata:photo_description"
    assert got[sample_photos[2].photo_id].text == "table caption"
    assert all(not c.error for c in got.values())

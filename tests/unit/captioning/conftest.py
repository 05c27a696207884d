"""Captioning fixtures: a tiny random LLaVA saved like a hub checkpoint, and small HR shards of real photos."""

from __future__ import annotations

import pytest

# Metadata variants: full Unsplash-like fields, a blank description (-> ai_description), nothing (-> fixed caption).
META_VARIANTS = (
    lambda stem: {"photo_description": f"a photograph: {stem}", "ai_description": f"{stem} photo"},
    lambda stem: {"photo_description": "", "ai_description": f"{stem} photo from the sample set"},
    lambda stem: {"photo_description": None, "ai_description": "nan"},
)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from captioning.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def photo_samples(sample_photos):
    """[(key, 256² JPEG bytes, Unsplash-like metadata)] for the 12 bundled photos."""
    from captioning.tiny import photo_jpeg

    return [(p.photo_id, photo_jpeg(p.path, 256), META_VARIANTS[i % 3](p.path.stem))
            for i, p in enumerate(sample_photos)]


@pytest.fixture
def caption_root(tmp_path, photo_samples):
    """A dataset root with 3 done HR shards of 4 photos each (docs/DESIGN.md §3 layout)."""
    from captioning.tiny import write_hr_shard

    root = str(tmp_path / "ds")
    for shard in range(3):
        write_hr_shard(root, shard, photo_samples[4 * shard:4 * shard + 4])
    return root


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs with one torch thread (tests/conftest.py `one_torch_thread`)."""

"""The shard writer on a local folder source: output contract, resume, dedup, config guard, never-raise, manifest."""

from __future__ import annotations

import io
import json
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset import contract
from dataset.build import build_shards
from dataset.manifest import write_manifest
from dataset.shard import ShardBuilder
from dataset.sources import plan_shards, read_source
from dataset.verify import verify_root


def check_contract(root: str, image_size: int) -> list[str]:
    """docs/DESIGN.md §3 on real shards; returns all sample keys in shard order."""
    all_keys = []
    for shard in contract.list_shards(root):
        rows = pq.read_table(contract.hr_parquet(root, shard)).to_pylist()
        stats = contract.read_json(contract.hr_stats(root, shard))
        ok_keys = [r["key"] for r in rows if r["status"] == "success"]
        members = list(contract.iter_tar_samples(contract.hr_tar(root, shard)))
        assert [k for k, _, _ in members] == ok_keys  # tar samples == parquet success rows, same order
        assert stats["samples_in_tar"] == len(ok_keys) and stats["count"] == len(rows)
        assert sum(stats["status_counts"].values()) == len(rows)
        for key, files, err in members:
            assert err is None and "." not in key and set(files) == {"jpg", "json"}
            with Image.open(io.BytesIO(files["jpg"])) as im:
                assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (image_size, image_size))
            assert json.loads(files["json"])["key"] == key
        for r in rows:
            assert (r["status"] == "success") == (r["error"] is None), r
        all_keys += ok_keys
    assert len(all_keys) == len(set(all_keys))
    return all_keys


def test_tiny_root_meets_the_contract(tiny_root):
    keys = check_contract(tiny_root, 64)
    assert len(keys) == 12 and contract.list_shards(tiny_root) == [0, 1, 2]


def test_resume_skips_done_and_rebuilds_partial_shards(sample_photos, tiny_cfg, tmp_path):
    src, root = str(sample_photos[0].path.parent), str(tmp_path / "ds")
    first = build_shards(src, root, tiny_cfg, use_ray=False)
    tar1 = open(contract.hr_tar(root, 1), "rb").read()
    # Simulate a kill during shard 1: stats gone, a truncated tar and a temp file left behind.
    (tmp_path / "ds/hr/000001_stats.json").unlink()
    (tmp_path / "ds/hr/000001.tar").write_bytes(tar1[:5000])
    (tmp_path / "ds/hr/000001.tar.tmp-deadbeef").write_bytes(b"partial")
    again = build_shards(src, root, tiny_cfg, use_ray=False)
    assert again["shards_skipped"] == 2 and again["new_samples"] == 5
    assert again["totals"]["successes"] == first["totals"]["successes"] == again["samples"]
    assert open(contract.hr_tar(root, 1), "rb").read() == tar1  # mtime=0: rebuilt bytes are identical
    assert not list((tmp_path / "ds/hr").glob("*.tmp-*"))
    check_contract(root, 64)


def test_duplicates_are_removed_within_and_across_shards(sample_photos, tiny_cfg, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for p in sample_photos[:4]:
        shutil.copy(p.path, folder / p.path.name)
    shutil.copy(sample_photos[0].path, folder / f"a_copy{sample_photos[0].path.suffix}")  # shard 0, dup of #1
    shutil.copy(sample_photos[1].path, folder / f"zz_copy{sample_photos[1].path.suffix}")  # shard 1, dup of #2
    cfg = tiny_cfg.override(shard_size=4)
    summary = build_shards(str(folder), str(tmp_path / "ds"), cfg, use_ray=False)
    assert summary["extra"]["cross_shard_dedup"] == {"shards_rewritten": 1, "duplicates_removed": 1}
    rows = [r for s in (0, 1) for r in pq.read_table(contract.hr_parquet(str(tmp_path / "ds"), s)).to_pylist()]
    dups = {r["key"]: r["duplicate_of"] for r in rows if r["status"] == "duplicate"}
    assert dups == {"astronaut": "a_copy", "zz_copy": "chelsea"}
    keys = check_contract(str(tmp_path / "ds"), 64)
    assert len(keys) == 4
    assert build_shards(str(folder), str(tmp_path / "ds"), cfg, use_ray=False)["totals"]["duplicates"] == 2  # stable


def test_a_root_refuses_a_different_config(sample_photos, tiny_cfg, tmp_path):
    build_shards(str(sample_photos[0].path.parent), str(tmp_path), tiny_cfg, limit=2, use_ray=False)
    with pytest.raises(ValueError, match="built with config"):
        build_shards(str(sample_photos[0].path.parent), str(tmp_path), tiny_cfg.override(image_size=32),
                     limit=2, use_ray=False)
    # speed knobs are not content: a rerun with more threads resumes the same root
    assert build_shards(str(sample_photos[0].path.parent), str(tmp_path), tiny_cfg.override(threads=7), limit=2,
                        use_ray=False)["shards_skipped"] == 1


def test_shard_builder_never_raises(sample_photos, tiny_cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    spec = plan_shards(read_source(str(sample_photos[0].path.parent), tiny_cfg, limit=2), 5)[0]
    res = ShardBuilder(tiny_cfg, str(blocker))(spec)
    assert not res.ok and res.shard_id == 0 and res.err


def test_manifest(tiny_root):
    m = write_manifest(tiny_root, name="tiny")
    assert contract.read_json(contract.manifest_path(tiny_root)) == json.loads(json.dumps(m))
    assert m["num_samples"] == 12 and m["hr"]["shards"] == [0, 1, 2] and m["hr"]["counts"]["successes"] == 12
    assert m["lr"]["deg0test"]["complete"] and m["captions"]["cap0test"]["shards"] == [0, 1, 2]
    assert m["hr"]["config"]["image_size"] == 64 and len(m["version"]) == 12
    assert write_manifest(tiny_root, name="tiny")["version"] == m["version"]  # content-derived


def test_verify_root_finds_broken_contracts(tiny_root, tmp_path):
    assert verify_root(tiny_root)["problems"] == [] and verify_root(tiny_root)["samples"] == 12
    broken = tmp_path / "broken"
    shutil.copytree(tiny_root, broken)
    samples = [(k, f) for k, f, _ in contract.iter_tar_samples(contract.hr_tar(str(broken), 0))]
    extra = ("evil", {"jpg": samples[0][1]["jpg"], "json": b'{"key": "x"}'})
    contract.put_atomic(contract.hr_tar(str(broken), 0), contract.tar_bytes(samples[1:] + [extra]))
    problems = verify_root(str(broken))["problems"]
    assert any("differ from parquet" in p for p in problems) and any("names another key" in p for p in problems)


def test_nsarm_shard_cli(sample_photos, tmp_path, capsys):
    from nsarm.cli import main

    root = str(tmp_path / "ds")
    argv = ["shard", str(sample_photos[0].path.parent), root, "--preset", "tiny", "--image-size", "48",
            "--min-side", "48", "--limit", "3", "--shard-size", "2"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["totals"]["successes"] == 3 and summary["shards_total"] == 2
    assert verify_root(root)["problems"] == [] and verify_root(root)["samples"] == 3
    assert contract.read_json(contract.join(root, "hr", "config.json"))["config"]["image_size"] == 48

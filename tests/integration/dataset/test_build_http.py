"""The shard stage end to end over real HTTP: every hostile input recorded with its reason while the rest of the
shard completes; the Unsplash path on Ray; --retry-failed re-fetching only the failed rows."""

from __future__ import annotations

import pandas as pd
import pytest

from dataset import contract
from dataset.build import build_shards
from dataset.hostile import EXPECTED
from dataset.httpserve import PhotoServer
from dataset.samples import write_unsplash_tsv
from dataset.shard import read_parquet
from dataset.verify import verify_root

pytestmark = pytest.mark.integration


def hostile_rows(srv) -> dict[str, tuple[str, str | None]]:
    """url → (status, reason) for every hostile case of the issue, plus a few of our own."""
    rows = {srv.url(f"as-image/{name}"): outcome for name, outcome in EXPECTED.items()}  # claims image/jpeg
    rows.update({
        srv.url("files/page.html"): ("failed_to_download", "bad_content_type"),  # HTML served as HTML
        srv.url("files/plain.jpg"): ("duplicate", "duplicate"),  # same bytes as as-image/plain.jpg
        srv.url("status/404"): ("failed_to_download", "http_404"),
        srv.url("status/500"): ("failed_to_download", "http_500"),
        srv.url("hang"): ("failed_to_download", "timeout"),
        srv.url("redirect-loop"): ("failed_to_download", "too_many_redirects"),
        srv.url("noai/plain.jpg"): ("failed_to_download", "robots_opt_out"),
        "file:///etc/passwd": ("failed_to_download", "unsupported_scheme"),
        "ftp://127.0.0.1/photo.jpg": ("failed_to_download", "unsupported_scheme"),
    })
    return rows


def test_hostile_inputs_are_recorded_and_the_shard_completes(hostile_server, fast_cfg, tmp_path):
    expected = hostile_rows(hostile_server)
    urls = list(expected)
    csv = tmp_path / "urls.csv"
    pd.DataFrame({"url": urls, "caption": [f"c{i}" for i in range(len(urls))]}).to_csv(csv, index=False)
    cfg = fast_cfg.override(shard_size=len(urls))  # one shard holding every case
    summary = build_shards(str(csv), str(tmp_path / "ds"), cfg, use_ray=False)
    assert summary["shards_done"] == 1 and summary["shards_failed"] == {}
    rows = read_parquet(contract.hr_parquet(str(tmp_path / "ds"), 0))
    got = {r["source"]: (r["status"], r["error"]) for r in rows}
    assert got == expected
    n_ok = sum(s == "success" for s, _ in expected.values())
    assert summary["totals"]["successes"] == summary["samples"] == n_ok == 7
    stats = contract.read_json(contract.hr_stats(str(tmp_path / "ds"), 0))
    assert stats["error_counts"]["unsupported_scheme"] == 2 and sum(stats["status_counts"].values()) == len(urls)
    assert not any(p.startswith("etc") for p in hostile_server.hits)  # file: never became a request
    report = verify_root(str(tmp_path / "ds"))
    assert report["problems"] == [] and report["samples"] == n_ok


def test_unsplash_source_on_ray(ray_local, photo_server, sample_photos, tmp_path):
    tsv = write_unsplash_tsv(sample_photos, photo_server.base_url, tmp_path / "src" / "photos.tsv")
    cfg = fast_cfg_for_ray()
    seen = []
    summary = build_shards(str(tsv.parent), str(tmp_path / "ds"), cfg, limit=10,
                           progress=lambda res, done, total: seen.append((res.shard_id, done, total)))
    assert summary["shards_done"] == 2 and summary["totals"]["successes"] == 10 and summary["new_samples"] == 10
    assert sorted(s for s, _, _ in seen) == [0, 1] and [d for _, d, _ in seen] == [1, 2]
    report = verify_root(str(tmp_path / "ds"))
    assert report["problems"] == [] and report["keys"] == [p.photo_id for p in sample_photos[:10]]
    rows = read_parquet(contract.hr_parquet(str(tmp_path / "ds"), 0))
    assert rows[0]["source"].endswith("astronaut.png?w=256&fit=max&fm=png&q=100") and rows[0]["caption"] == "a photograph: astronaut"
    again = build_shards(str(tsv.parent), str(tmp_path / "ds"), cfg, limit=10)
    assert again["shards_skipped"] == 2 and again["new_samples"] == 0


def fast_cfg_for_ray():
    from dataset.config import PRESETS

    return PRESETS["tiny"].override(shard_size=5, threads=4)


def test_retry_failed_refetches_only_failed_rows(hostile_server, sample_photos, fast_cfg, tmp_path):
    import socket

    with socket.socket() as s:  # a port where the "flaky host" is down during the first run
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    photos = sample_photos[:6]
    urls = [hostile_server.url(f"slow/{p.path.name}") if i % 2 == 0 else f"http://127.0.0.1:{port}/{p.path.name}"
            for i, p in enumerate(photos)]
    csv = tmp_path / "urls.csv"
    pd.DataFrame({"url": urls, "id": [p.photo_id for p in photos]}).to_csv(csv, index=False)
    root, cfg = str(tmp_path / "ds"), fast_cfg.override(shard_size=6)
    first = build_shards(str(csv), root, cfg, use_ray=False, id_col="id")
    assert first["totals"]["successes"] == 3 and first["totals"]["error_counts"] == {"connection_error": 3}
    hits_before = dict(hostile_server.hits)
    with PhotoServer(photos[0].path.parent, port=port):
        assert build_shards(str(csv), root, cfg, use_ray=False, id_col="id")["shards_skipped"] == 1  # plain rerun
        second = build_shards(str(csv), root, cfg, use_ray=False, id_col="id", retry_failed=True)
    assert second["totals"]["successes"] == 6 and second["totals"]["error_counts"] == {}
    for i in (0, 2, 4):  # earlier successes were copied from the old tar, not downloaded again
        assert hostile_server.hits[f"slow/{photos[i].path.name}"] == hits_before[f"slow/{photos[i].path.name}"]
    report = verify_root(root)
    assert report["problems"] == [] and report["keys"] == [p.photo_id for p in photos]
    assert contract.read_json(contract.hr_stats(root, 0))["retried_rows"] == 3

"""Check the docs/DESIGN.md §3 contract of a dataset root's HR shards on the real files (STYLE G10).

    python -m dataset.verify ROOT            # prints problems, exit status 1 if any

Per done shard: the tar's samples are exactly the parquet's `success` rows, in order; every key is dot-free and
unique in the root; every `{key}.jpg` is an image_size² RGB JPEG and `{key}.json` names its key; `_stats.json`
counts agree with the parquet. Every other row has a reason in `error`.
"""

from __future__ import annotations

import io
import json
import sys
from collections import Counter

from PIL import Image

from dataset import contract
from dataset.shard import SUCCESS, read_parquet


def verify_root(root: str, image_size: int | None = None, decode: bool = True) -> dict:
    """Returns {"problems": [str], "samples": int, "keys": [str in shard order], "shards": [int]}."""
    problems: list[str] = []
    if image_size is None:
        image_size = contract.read_json(contract.join(root, "hr", "config.json"))["config"]["image_size"]
    keys_all: list[str] = []
    shards = contract.list_shards(root, "hr")
    for shard in shards:
        where = f"shard {shard:06d}"
        rows = read_parquet(contract.hr_parquet(root, shard))
        stats = contract.read_json(contract.hr_stats(root, shard))
        ok_keys = [r["key"] for r in rows if r["status"] == SUCCESS]
        bad = [r["key"] for r in rows if (r["status"] == SUCCESS) == bool(r["error"])]
        if bad:
            problems.append(f"{where}: rows {bad[:5]} have a status/error mismatch")
        if stats.get("count") != len(rows) or stats.get("samples_in_tar") != len(ok_keys):
            problems.append(f"{where}: stats count {stats.get('count')}/{stats.get('samples_in_tar')} but parquet "
                            f"has {len(rows)} rows, {len(ok_keys)} successes")
        tar_keys = []
        for key, files, err in contract.iter_tar_samples(contract.hr_tar(root, shard)):
            if err:
                problems.append(f"{where}: unsafe tar member {key!r}: {err}")
                continue
            tar_keys.append(key)
            if "." in key or "/" in key:
                problems.append(f"{where}: key {key!r} is not dot/path-free")
            if set(files) != {"jpg", "json"}:
                problems.append(f"{where}: sample {key!r} has members {sorted(files)}, want jpg+json")
                continue
            if json.loads(files["json"]).get("key") != key:
                problems.append(f"{where}: {key}.json names another key")
            if decode:
                with Image.open(io.BytesIO(files["jpg"])) as im:
                    if (im.format, im.mode, im.size) != ("JPEG", "RGB", (image_size, image_size)):
                        problems.append(f"{where}: {key}.jpg is {im.format} {im.mode} {im.size}")
        if tar_keys != ok_keys:
            problems.append(f"{where}: tar keys {tar_keys[:5]}… differ from parquet successes {ok_keys[:5]}…")
        keys_all += tar_keys
    dup = sorted(k for k, n in Counter(keys_all).items() if n > 1)
    if dup:
        problems.append(f"keys repeated across shards: {dup[:10]}")
    return {"problems": problems, "samples": len(keys_all), "keys": keys_all, "shards": shards}


if __name__ == "__main__":
    report = verify_root(sys.argv[1])
    for p in report["problems"]:
        print(p)
    print(f"{len(report['shards'])} shards, {report['samples']} samples, {len(report['problems'])} problems")
    sys.exit(1 if report["problems"] else 0)

"""Checks the CLIs run on their inputs before doing anything: a mistake gives one line naming the input and what is
wrong (`nsarm degrade: error: dataset root '/data/ds-typo' does not exist`), a non-zero exit, and nothing created.

`nsarm/cli.py` prints an `InputError` as that line (exit status 2); the checks only read.
"""

from __future__ import annotations

import re

import fsspec

from dataset import contract


class InputError(ValueError):
    """A bad command-line input; the message is one line naming the input."""


_URI_NOT_PATH = re.compile(r"^[A-Za-z][\w+.-]+:/(?!/)")  # models:/nsarm@champion, runs:/<id>/model


def _is_remote_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def check_exists(url: str, what: str) -> None:
    """`url` (local path, s3://, glob) exists, or InputError "`what` 'url' does not exist"."""
    if _is_remote_url(url) or _URI_NOT_PATH.match(url):
        return  # fetched or resolved later, by code with its own errors
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError):  # a protocol fsspec does not know: its reader checks it
        return
    found = fs.glob(path) if any(c in path for c in "*?[") else fs.exists(path)
    if not found:
        raise InputError(f"{what} {url!r} does not exist")


def check_dataset_root(root: str, shards: list[int] | None = None) -> list[int]:
    """`root` exists and holds done HR shards (`hr/{shard}_stats.json`); requested `shards` are among them.

    Returns:
        the done HR shard ids.
    """
    check_exists(root, "dataset root")
    done = contract.list_shards(root, "hr", done_only=True)
    if not done:
        raise InputError(f"dataset root {root!r} has no finished HR shards ({contract.join(root, 'hr')}/"
                         f"<shard>_stats.json); build them first with `nsarm shard SOURCE {root}`")
    missing = sorted(set(shards or ()) - set(done))
    if missing:
        raise InputError(f"--shards {','.join(map(str, missing))}: not finished HR shards of {root!r} "
                         f"(done: {','.join(map(str, done))})")
    return done

"""The `nsarm` console entry point: one argparse program whose subcommands live beside the code they front.

    nsarm stack up|down|status          embedded Prefect + MLflow + Ray (nsarm/stack_cli.py)
    nsarm screenshots --out DIR         headless-Chromium PNGs of the stack's three UIs (nsarm/screenshots.py)
    nsarm serve-photos DIR              serve the bundled photos + write an Unsplash-style photos.tsv
    nsarm shard|degrade|caption ...     single-process runs of a data stage (dataset/, degradation/, captioning/)
    nsarm upscale|eval ...              inference and evaluation (nsarm/)

Each module in `_COMMAND_MODULES` exposes `register(subparsers)`, adding its subcommands with `set_defaults(func=...)`;
heavy imports happen inside the command functions, so `nsarm --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = (
    "nsarm.stack_cli",
    "nsarm.screenshots",
    "dataset.cli",
    "degradation.cli",
    "captioning.cli",
    "nsarm.inference_cli",
    "nsarm.eval.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsarm", description="NSARM data, training and inference workflow")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not (e.name and name.startswith(e.name)):  # the module exists but one of ITS imports is missing
                raise
            continue  # a stage not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dataset.inputs import InputError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:  # a bad input, checked before any work: one line, no traceback
        print(f"nsarm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `nsarm` console entry point: one argparse program whose subcommands live beside the code they front.

    nsarm stack up|down|status          embedded Prefect + MLflow + Ray (nsarm/stack_cli.py)
    nsarm screenshots --out DIR         headless-Chromium PNGs of the stack's three UIs (nsarm/screenshots.py)
    nsarm serve-photos DIR              serve the bundled photos + write an Unsplash-style photos.tsv
    nsarm shard|degrade|caption ...     single-process runs of a data stage (dataset/, degradation/, captioning/)
    nsarm upscale|eval ...              inference and evaluation (nsarm/)

Each module in `COMMAND_MODULES` exposes `register(subparsers)`, adding its subcommands with `set_defaults(func=...)`.
They are plain imports, so a module that fails to import stops the program with its own error instead of losing a
subcommand; heavy imports (torch, Ray, MLflow) happen inside the command functions, so `nsarm --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from captioning import cli as caption_cli
from dataset import cli as dataset_cli
from degradation import cli as degradation_cli
from nsarm import inference_cli, screenshots, stack_cli
from nsarm.eval import cli as eval_cli

COMMAND_MODULES = (stack_cli, screenshots, dataset_cli, degradation_cli, caption_cli, inference_cli, eval_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsarm", description="NSARM data, training and inference workflow")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
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

"""The `dexvla` command: parses arguments and dispatches to each part's commands.

Each part of the package owns its sub-commands in a `commands.py` with
`register(subparsers)`; this file only lists those modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "dexvla.policy.commands",
    "dexvla.serve.commands",
    "dexvla.sim.commands",
    "dexvla.data.commands",
    "dexvla.annotate.commands",
    "dexvla.eval.commands",
    "dexvla.train.commands",
    "dexvla.experiments.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dexvla", description="DexVLA: vision-language-action model for robot control"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for provenance
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"dexvla {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `dexvla` command: parses arguments and dispatches to each part's commands.

Each part of the package owns its subcommands in a `commands.py` with `register(subparsers)`;
this file lists them with their one-line help. Only the module of the command being run is
imported (its dependencies, torch and transformers among them, load in seconds), so
`dexvla --help` and an unknown command answer at once; every other command gets a stand-in
parser with its help line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dexvla.io import one_line

# name -> (the module that registers it, its help line); in the order `dexvla --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("dexvla.policy.commands", "list model presets and their parameter counts"),
    "serve": (
        "dexvla.serve.commands",
        "serve a checkpoint to openpi-compatible websocket clients",
    ),
    "tasks": ("dexvla.sim.commands", "list the simulated tasks"),
    "collect": ("dexvla.sim.commands", "record scripted demonstrations into a LeRobot v3 dataset"),
    "dataset": ("dexvla.data.commands", "inspect datasets (LeRobot v3, ACT HDF5)"),
    "annotate": (
        "dexvla.annotate.commands",
        "label a dataset's frames with sub-steps from the robot's signals",
    ),
    "eval": (
        "dexvla.eval.commands",
        "closed-loop evaluation in a simulated task, with videos and a report",
    ),
    "train": ("dexvla.train.commands", "train one stage of the DexVLA curriculum"),
    "convert-released-expert": (
        "dexvla.released.commands",
        "convert the authors' released ScaleDP expert into a stage-1 artefact",
    ),
    "demo": (
        "dexvla.experiments.commands",
        "collect, train the three stages, evaluate and report, end to end",
    ),
    "benchmark": (
        "dexvla.experiments.commands",
        "run a benchmark suite or ablation (aloha-sim, ablate-*, cross-embodiment)",
    ),
    "learning-curve": (
        "dexvla.experiments.commands",
        "evaluate a training run's kept checkpoints: success against samples seen",
    ),
}


USER_ERRORS = (ValueError, KeyError, OSError)  # bad input, reported in one line
DEBUG_ENV = "DEXVLA_DEBUG"  # set to 1: a user error raises with its traceback


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand registered in full (`command` None), or only `command`'s
    module registered and stand-ins for the rest (`command` "" registers none)."""
    parser = argparse.ArgumentParser(
        prog="dexvla", description="DexVLA: vision-language-action model for robot control"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = {module for name, (module, _) in COMMANDS.items() if command in (None, name)}
    for name, (module, help_text) in COMMANDS.items():
        if name in subparsers.choices:
            continue  # registered with an earlier command of its module
        if module in wanted:
            importlib.import_module(module).register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def _command_of(argv: list[str]) -> str:
    """The subcommand `argv` names ("" when it names none, as `dexvla --help` does)."""
    first = next((arg for arg in argv if not arg.startswith("-")), "")
    return first if first in COMMANDS else ""


def main(argv: list[str] | None = None) -> int:
    """Run the command; a user error (bad input: ValueError, KeyError, OSError such as a path
    that cannot be read or written) prints one `error:` line and returns 2. `--debug` or
    DEXVLA_DEBUG=1 lets it raise with its traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    parser.add_argument("--debug", action="store_true", help="show an error's traceback")
    args = parser.parse_args(argv)
    args.argv = argv  # as typed, for provenance
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as error:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"dexvla {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

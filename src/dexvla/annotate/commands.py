"""`dexvla annotate DIR` and `dexvla annotate --sim-task TASK`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    annotate = subparsers.add_parser(
        "annotate", help="label a dataset's frames with sub-steps from the robot's signals"
    )
    annotate.add_argument("path", type=Path, nargs="?", help="dataset directory to label")
    annotate.add_argument(
        "--overwrite", action="store_true", help="relabel episodes that already have sub-steps"
    )
    annotate.add_argument(
        "--evaluate",
        action="store_true",
        help="write nothing; score the labels against the dataset's existing sub-steps",
    )
    annotate.add_argument(
        "--sim-task",
        help="instead of PATH: collect scripted episodes of this task and score against them",
    )
    annotate.add_argument("--episodes", type=int, default=10, help="with --sim-task (default 10)")
    annotate.add_argument("--json", action="store_true", help="print one JSON object")
    annotate.set_defaults(func=run_annotate)


def run_annotate(args: argparse.Namespace) -> int:
    from dexvla.annotate.dataset import annotate_dataset, evaluate_on_sim

    if args.sim_task:
        result = evaluate_on_sim(args.sim_task, range(args.episodes))
    elif args.path is None:
        raise ValueError("give a dataset PATH or --sim-task TASK")
    else:
        result = annotate_dataset(args.path, overwrite=args.overwrite, evaluate=args.evaluate)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0

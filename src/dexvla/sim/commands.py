"""`dexvla tasks` and `dexvla collect`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    tasks = subparsers.add_parser("tasks", help="list the simulated tasks")
    tasks.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tasks.add_argument(
        "--featured", action="store_true", help="only the featured tasks (not all of MetaWorld)"
    )
    tasks.set_defaults(func=run_tasks)

    collect = subparsers.add_parser(
        "collect", help="record scripted demonstrations into a LeRobot v3 dataset"
    )
    collect.add_argument("--task", required=True, help="task name (see `dexvla tasks`)")
    collect.add_argument("--episodes", type=int, required=True, help="successful episodes wanted")
    collect.add_argument("--out", type=Path, required=True, help="dataset directory")
    collect.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default 2)"
    )
    collect.add_argument("--seed", type=int, default=0, help="episode i uses seed SEED+i")
    collect.add_argument(
        "--image-size", default="128", help="N or HxW camera image size (default 128)"
    )
    collect.add_argument(
        "--max-attempts", type=int, default=None, help="cap on new seeds tried (default 2N+10)"
    )
    collect.add_argument("--no-progress", action="store_true", help="no progress bar")
    collect.set_defaults(func=run_collect)


def run_tasks(args: argparse.Namespace) -> int:
    from dexvla.sim import list_tasks

    tasks = [t.as_dict() for t in list_tasks(featured_only=args.featured)]
    if args.json:
        print(json.dumps(tasks, indent=1))
        return 0
    header = (
        f"{'task':32} {'embodiment':10} {'act':>3} {'state':>5} {'steps':>5} {'fps':>3}  cameras"
    )
    print(header)
    for t in tasks:
        print(
            f"{t['name']:32} {t['embodiment']:10} {t['action_dim']:>3} {t['state_dim']:>5} "
            f"{t['max_steps']:>5} {t['fps']:>3}  {','.join(t['cameras'])}"
        )
    return 0


def run_collect(args: argparse.Namespace) -> int:
    from dexvla.sim.collect import collect
    from dexvla.sim.registry import parse_image_size

    report = collect(
        args.task,
        episodes=args.episodes,
        out=args.out,
        workers=args.workers,
        seed=args.seed,
        image_size=parse_image_size(args.image_size),
        max_attempts=args.max_attempts,
        progress=not args.no_progress,
    )
    rate = report.frames / report.seconds if report.seconds else 0.0
    print(
        f"{report.task}: {report.new_episodes} new, {report.total_episodes} in {report.out}; "
        f"{len(report.failed_seeds)} failed seed(s) {report.failed_seeds[:10]}; "
        f"{report.frames} frames in {report.seconds:.1f} s ({rate:.1f} frames/s)"
    )
    if report.total_episodes < args.episodes:
        print(f"dexvla collect: only {report.total_episodes} of {args.episodes} episodes")
        return 1
    return 0

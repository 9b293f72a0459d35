"""`dexvla benchmark NAME`: run a named suite (docs/benchmarks.md) and write its results."""

from __future__ import annotations

import argparse
from pathlib import Path

from dexvla.experiments.pipeline import StepFailed, add_size_arguments, size_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from dexvla.experiments.suites import BENCH_SIZES, SUITES

    suites = "\n".join(f"  {name}: {suite.description}" for name, suite in SUITES.items())
    parser = subparsers.add_parser(
        "benchmark",
        help="run a benchmark suite or ablation (aloha-sim, ablate-*, cross-embodiment)",
        description=f"Run a named benchmark suite and write results.md/.json/.png.\n\n{suites}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", help="suite name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per arm and task")
    parser.add_argument("--out", default="runs/benchmarks", help="work directory (shared)")
    add_size_arguments(parser, BENCH_SIZES, default="cpu")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dexvla.experiments.runner import SuiteRun
    from dexvla.experiments.suites import BENCH_SIZES, SUITES, get_suite

    if args.list or not args.name:
        for name, suite in SUITES.items():
            arms = "; ".join(arm.name for arm in suite.arms)
            print(f"{name}: {suite.description}\n    tasks: {', '.join(suite.tasks)}")
            print(f"    arms: {arms}")
        return 0 if args.list else 2
    suite = get_suite(args.name)
    size = size_from_args(BENCH_SIZES, args)
    runner = SuiteRun(suite, size, args.seeds, Path(args.out), argv=args.argv)
    try:
        path = runner.run()
    except StepFailed as error:
        print(f"[benchmark] {error}; re-run the same command to resume", flush=True)
        return 1
    print(path.read_text())
    print(f"[benchmark] results: {path}", flush=True)
    return 0

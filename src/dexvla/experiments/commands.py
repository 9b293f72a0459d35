"""`dexvla demo` (the whole system end to end) and `dexvla benchmark NAME` (a named suite,
docs/benchmarks.md). Both plan a suite and run it with the same runner; `--dry-run` prints
the plan instead."""

from __future__ import annotations

import argparse
from pathlib import Path

from dexvla.experiments.sizes import BENCH_SIZES, DEMO_SIZES, add_size_arguments, size_from_args

DEMO_DESCRIPTION = """\
`dexvla demo`: the whole system end to end, at a size chosen for the machine.

Collect scripted demonstrations (several embodiments for stage 1, ALOHA transfer cube with
sub-steps for stages 2 and 3), train the three stages with the stage presets of --preset
(tiny-stageN for the tiny presets, 2b-stageN for dexvla-2b), evaluate the result and the
scripted expert in closed loop, and write a Markdown report. Every step is printed before it
runs (--dry-run prints them all, with their resolved recipes, and runs nothing), and every step
resumes: collection skips finished episodes, training continues from its last checkpoint (a
finished stage is skipped), evaluation skips finished episodes.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from dexvla.experiments.suites import SUITES

    parser = subparsers.add_parser(
        "demo",
        help="collect, train the three stages, evaluate and report, end to end",
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_size_arguments(parser, DEMO_SIZES, default="cpu")
    parser.add_argument("--out", default="runs/demo", help="where everything goes")
    parser.set_defaults(func=run_demo)

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
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: re-render results.md/json/png from the finished evaluations with "
        "this revision's tables, keeping the recorded command, dates, revision and timings",
    )
    parser.set_defaults(func=run_benchmark)

    parser = subparsers.add_parser(
        "learning-curve",
        help="evaluate a training run's kept checkpoints: success against samples seen",
        description="Export every kept checkpoint of a `dexvla train` run (train it with "
        "--keep-last 0) and evaluate each on the same episodes; writes curve.json, curve.md "
        "and curve.png. Resumes: exported policies and finished episodes are reused.",
    )
    parser.add_argument("--run", required=True, help="the `dexvla train --out` directory")
    parser.add_argument("--data", required=True, help="the run's datasets, comma-separated")
    parser.add_argument("--task", required=True, help="simulated task (see `dexvla tasks`)")
    parser.add_argument("--out", required=True, help="where the curve and evaluations go")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per checkpoint")
    parser.add_argument("--seed", type=int, default=100000, help="first evaluation seed")
    parser.add_argument("--workers", type=int, default=2, help="evaluation processes")
    parser.add_argument("--image-size", type=int, default=128, help="rendered camera size")
    parser.add_argument("--max-steps", type=int, help="episode limit (default: the task's)")
    parser.add_argument("--init", help="the run's --init, if its architecture comes from it")
    parser.add_argument("--every", type=int, default=1, help="every n-th kept checkpoint")
    parser.set_defaults(func=run_learning_curve)


def run_demo(args: argparse.Namespace) -> int:
    from dexvla.experiments.demo import run_demo

    size = size_from_args(DEMO_SIZES, args)
    return run_demo(size, Path(args.out), argv=args.argv, dry_run=args.dry_run)


def run_benchmark(args: argparse.Namespace) -> int:
    from dexvla.experiments.pipeline import StepFailed
    from dexvla.experiments.runner import SuiteRun
    from dexvla.experiments.suites import SUITES, get_suite

    if args.list or not args.name:
        for name, suite in SUITES.items():
            arms = "; ".join(arm.name for arm in suite.arms)
            print(f"{name}: {suite.description}\n    tasks: {', '.join(suite.tasks)}")
            print(f"    arms: {arms}")
        return 0 if args.list else 2
    suite = get_suite(args.name)
    size = size_from_args(BENCH_SIZES, args)
    runner = SuiteRun(suite, size, args.seeds, Path(args.out), argv=args.argv)
    plan = runner.plan()
    if args.dry_run:
        runner.pipeline.print_plan(plan)
        return 0
    try:
        path = runner.report(plan) if args.report_only else runner.run(plan)
    except StepFailed as error:
        resume = "" if args.report_only else "; re-run the same command to resume"
        print(f"[benchmark] {error}{resume}", flush=True)
        return 1
    print(path.read_text())
    print(f"[benchmark] results: {path}", flush=True)
    return 0


def run_learning_curve(args: argparse.Namespace) -> int:
    from dexvla.experiments.curve import curve_config, learning_curve, summary_lines

    config = curve_config(args)
    for line in summary_lines(learning_curve(config)):
        print(line)
    print(f"wrote {config.out / 'curve.md'} and {config.out / 'curve.png'}")
    return 0

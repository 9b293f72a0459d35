"""`dexvla demo`: the whole system end to end, at a size chosen for the machine.

Collect scripted demonstrations (several embodiments for stage 1, ALOHA transfer cube with
sub-steps for stages 2 and 3), train the three stages, evaluate the result and the scripted
expert in closed loop, and write a Markdown report. Every step is one of the package's own
commands, printed before it runs, and every step resumes: collection skips finished episodes,
training continues from its last checkpoint (a finished stage is skipped), evaluation skips
finished episodes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dexvla.data.atomic import atomic_write_bytes

EVAL_TASK = "aloha-transfer-cube"


@dataclass(frozen=True)
class DemoSize:
    """How much data, training and evaluation one demo run does."""

    name: str
    aloha_episodes: int
    pretrain_tasks: tuple[str, ...]
    pretrain_episodes: int
    image_size: int
    steps: tuple[int, int, int]
    batch_size: int
    eval_episodes: int
    eval_max_steps: int | None
    workers: int
    preset: str = "tiny"
    description: str = ""


SIZES: dict[str, DemoSize] = {
    "ci": DemoSize(
        name="ci",
        aloha_episodes=2,
        pretrain_tasks=("sawyer-reach",),
        pretrain_episodes=2,
        image_size=56,
        steps=(4, 4, 4),
        batch_size=2,
        eval_episodes=1,
        eval_max_steps=32,
        workers=1,
        description="the smallest run that exercises every step (CI)",
    ),
    "cpu": DemoSize(
        name="cpu",
        aloha_episodes=20,
        pretrain_tasks=("sawyer-reach", "sawyer-pick-place"),
        pretrain_episodes=10,
        image_size=84,
        steps=(400, 600, 300),
        batch_size=8,
        eval_episodes=8,
        eval_max_steps=None,
        workers=2,
        description="the default: about 20 minutes on a 2-core CPU",
    ),
    "gpu": DemoSize(
        name="gpu",
        aloha_episodes=50,
        pretrain_tasks=("sawyer-reach", "sawyer-pick-place", "sawyer-push", "hand-pick-place"),
        pretrain_episodes=50,
        image_size=128,
        steps=(5000, 10000, 5000),
        batch_size=32,
        eval_episodes=50,
        eval_max_steps=None,
        workers=4,
        description="more data and steps for a machine with a GPU",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="collect, train the three stages, evaluate and report, end to end",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", choices=tuple(SIZES), default="cpu", help="how big a run")
    parser.add_argument("--out", default="runs/demo", help="where everything goes")
    parser.add_argument("--episodes", type=int, help="ALOHA demonstrations to collect")
    parser.add_argument("--steps", type=int, nargs=3, metavar=("S1", "S2", "S3"))
    parser.add_argument("--eval-episodes", type=int)
    parser.add_argument("--workers", type=int, help="processes for collection and evaluation")
    parser.add_argument("--preset", help="policy preset (default tiny; e.g. dexvla-2b on a GPU)")
    parser.set_defaults(func=run)


def _size_from_args(args: argparse.Namespace) -> DemoSize:
    size = SIZES[args.size]
    changes: dict[str, Any] = {}
    if args.episodes is not None:
        changes["aloha_episodes"] = args.episodes
    if args.steps is not None:
        changes["steps"] = tuple(args.steps)
    if args.eval_episodes is not None:
        changes["eval_episodes"] = args.eval_episodes
    if args.workers is not None:
        changes["workers"] = args.workers
    if args.preset is not None:
        changes["preset"] = args.preset
    for name in ("aloha_episodes", "eval_episodes", "workers"):
        if changes.get(name, 1) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    return replace(size, **changes)


def run(args: argparse.Namespace) -> int:
    return run_demo(_size_from_args(args), Path(args.out))


def run_demo(size: DemoSize, out: Path, command: Callable[[list[str]], int] | None = None) -> int:
    """Run every step of the demo into `out`; returns the exit status of the first failure."""
    from dexvla.cli import main as cli_main

    command = command or cli_main
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def step(name: str, argv: list[str]) -> None:
        print(f"\n[demo] {name}: dexvla {shlex.join(argv)}", flush=True)
        start = time.perf_counter()
        status = command(argv)
        timings[name] = time.perf_counter() - start
        if status:
            raise RuntimeError(f"demo step {name!r} failed with status {status}")

    data = out / "data"
    aloha = data / EVAL_TASK
    pretrain = [data / task for task in size.pretrain_tasks]
    common = ["--workers", str(size.workers), "--image-size", str(size.image_size)]
    try:
        step(
            f"collect {EVAL_TASK}",
            [
                "collect",
                "--task",
                EVAL_TASK,
                "--episodes",
                str(size.aloha_episodes),
                "--out",
                str(aloha),
                *common,
            ],
        )
        for task, path in zip(size.pretrain_tasks, pretrain, strict=True):
            step(
                f"collect {task}",
                [
                    "collect",
                    "--task",
                    task,
                    "--episodes",
                    str(size.pretrain_episodes),
                    "--out",
                    str(path),
                    *common,
                ],
            )
        stage_data = {1: [aloha, *pretrain], 2: [aloha], 3: [aloha]}
        init = None
        for stage in (1, 2, 3):
            stage_out = out / f"stage{stage}"
            final = stage_out / "final"
            argv = [
                "train",
                "--stage",
                str(stage),
                "--preset",
                f"tiny-stage{stage}",
                "--data",
                ",".join(str(p) for p in stage_data[stage]),
                "--out",
                str(stage_out),
                "--steps",
                str(size.steps[stage - 1]),
                "--batch-size",
                str(size.batch_size),
                "--resume",
            ]
            if size.preset != "tiny":
                argv += ["--policy", size.preset]
            if init is not None:
                argv += ["--init", str(init)]
            if (final / "config.json").is_file():
                print(f"\n[demo] stage {stage}: {final} exists, skipped", flush=True)
            else:
                step(f"train stage {stage}", argv)
            init = final
        policy_eval, scripted_eval = out / "eval" / "policy", out / "eval" / "scripted"
        limit = ["--max-steps", str(size.eval_max_steps)] if size.eval_max_steps else []
        eval_common = [
            "eval",
            "--task",
            EVAL_TASK,
            "--episodes",
            str(size.eval_episodes),
            "--workers",
            str(size.workers),
            "--image-size",
            str(size.image_size),
            *limit,
        ]
        step(
            "evaluate the policy",
            [*eval_common, "--checkpoint", str(init), "--out", str(policy_eval)],
        )
        step(
            "evaluate the scripted expert",
            [*eval_common, "--policy", "scripted", "--out", str(scripted_eval)],
        )
    except RuntimeError as error:
        print(f"[demo] {error}; re-run the same command to resume", flush=True)
        return 1
    evaluations = {
        f"DexVLA ({size.preset}, stages 1-3)": policy_eval,
        "scripted expert (ceiling)": scripted_eval,
    }
    report = write_report(out, size, evaluations, timings)
    print_summary(evaluations)
    print(f"\n[demo] report: {report}", flush=True)
    return 0


def _summary(path: Path) -> dict[str, Any]:
    return json.loads((path / "eval_info.json").read_text())["summary"]


def print_summary(evaluations: dict[str, Path]) -> None:
    """The success table on the terminal, with partial progress (reward stages)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"closed loop on {EVAL_TASK}")
    for column in ("policy", "success", "95% interval", "stages reached", "mean max reward"):
        table.add_column(column)
    for name, path in evaluations.items():
        summary = _summary(path)
        low, high = summary["success_ci95"]
        table.add_row(
            name,
            f"{summary['successes']}/{summary['episodes']}",
            f"{low:.2f}-{high:.2f}",
            _stages(summary),
            f"{summary.get('mean_max_reward', 0.0):.2f}",
        )
    Console().print(table)


def _stages(summary: dict[str, Any]) -> str:
    stages = summary.get("stage_reached", {})
    return ", ".join(f"{s['name']} {s['fraction']:.0%}" for s in stages.values())


def write_report(
    out: Path, size: DemoSize, evaluations: dict[str, Path], timings: dict[str, float]
) -> Path:
    """A Markdown report linking the evaluation reports, videos and loss curves."""
    lines = [
        "# dexvla demo",
        "",
        f"Size `{size.name}` ({size.description}); policy preset `{size.preset}`; "
        f"{size.aloha_episodes} ALOHA demonstrations, stage 1 also on "
        f"{', '.join(size.pretrain_tasks)} ({size.pretrain_episodes} each); "
        f"training steps {size.steps[0]} / {size.steps[1]} / {size.steps[2]}.",
        "",
        f"## Closed loop on `{EVAL_TASK}`",
        "",
        "| policy | success | 95% interval | reward stages reached | mean max reward | report |",
        "|---|---|---|---|---|---|",
    ]
    for name, path in evaluations.items():
        summary = _summary(path)
        low, high = summary["success_ci95"]
        lines.append(
            f"| {name} | {summary['successes']}/{summary['episodes']} | {low:.2f}-{high:.2f} | "
            f"{_stages(summary)} | {summary.get('mean_max_reward', 0.0):.2f} | "
            f"[report]({path.relative_to(out)}/report.html) |"
        )
    lines += ["", "## Training", ""]
    for stage in (1, 2, 3):
        curve = out / f"stage{stage}" / "loss_curve.png"
        if curve.is_file():
            lines.append(f"Stage {stage}: ![stage {stage} loss]({curve.relative_to(out)})")
            lines.append("")
    videos = sorted(
        video for path in evaluations.values() for video in (path / "videos").glob("*.mp4")
    )
    if videos:
        lines += ["## Videos", ""]
        lines += [f"- [{video.name}]({video.relative_to(out)})" for video in videos]
        lines.append("")
    if timings:
        lines += ["## Time per step (this run)", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()]
    path = out / "report.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path

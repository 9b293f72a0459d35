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
from pathlib import Path

from dexvla.experiments.pipeline import (
    CI_SIZE,
    Command,
    Pipeline,
    RunSize,
    StepFailed,
    add_size_arguments,
    eval_summary,
    size_from_args,
    stages_reached,
)
from dexvla.io import atomic_write_bytes

EVAL_TASK = "aloha-transfer-cube"


SIZES: dict[str, RunSize] = {
    "ci": CI_SIZE,
    "cpu": RunSize(
        name="cpu",
        episodes=40,
        pretrain_tasks=("sawyer-reach", "sawyer-pick-place"),
        pretrain_episodes=10,
        image_size=84,
        steps=(500, 3000, 500),
        batch_size=8,
        eval_episodes=10,
        eval_max_steps=None,
        workers=2,
        description="the default: about 20 minutes on a 2-core CPU",
    ),
    "gpu": RunSize(
        name="gpu",
        episodes=50,
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
    add_size_arguments(parser, SIZES, default="cpu")
    parser.add_argument("--out", default="runs/demo", help="where everything goes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_demo(size_from_args(SIZES, args), Path(args.out))


def run_demo(size: RunSize, out: Path, command: Command | None = None) -> int:
    """Run every step of the demo into `out`; returns the exit status of the first failure."""
    out.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline("demo", command)
    data = out / "data"
    aloha = data / EVAL_TASK
    pretrain = [data / task for task in size.pretrain_tasks]
    policy_eval, scripted_eval = out / "eval" / "policy", out / "eval" / "scripted"
    try:
        for task, path in zip((EVAL_TASK, *size.pretrain_tasks), (aloha, *pretrain), strict=True):
            episodes = size.episodes if task == EVAL_TASK else size.pretrain_episodes
            pipeline.collect(task, episodes, path, size.image_size, size.workers)
        stage_data = {1: [aloha, *pretrain], 2: [aloha], 3: [aloha]}
        init = None
        for stage in (1, 2, 3):
            init = pipeline.train(
                stage,
                stage_data[stage],
                out / f"stage{stage}",
                steps=size.steps[stage - 1],
                batch_size=size.batch_size,
                policy=size.preset,
                init=init,
                options=size.train_options,
            )
        common = dict(
            episodes=size.eval_episodes,
            image_size=size.image_size,
            workers=size.workers,
            max_steps=size.eval_max_steps,
        )
        pipeline.evaluate(
            EVAL_TASK, policy_eval, checkpoint=init, name="evaluate the policy", **common
        )
        pipeline.evaluate(EVAL_TASK, scripted_eval, name="evaluate the scripted expert", **common)
    except StepFailed as error:
        print(f"[demo] {error}; re-run the same command to resume", flush=True)
        return 1
    evaluations = {
        f"DexVLA ({size.preset}, stages 1-3)": policy_eval,
        "scripted expert (ceiling)": scripted_eval,
    }
    report = write_report(out, size, evaluations, pipeline.timings)
    print_summary(evaluations)
    print(f"\n[demo] report: {report}", flush=True)
    return 0


def print_summary(evaluations: dict[str, Path]) -> None:
    """The success table on the terminal, with partial progress (reward stages)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"closed loop on {EVAL_TASK}")
    for column in ("policy", "success", "95% interval", "stages reached", "mean max reward"):
        table.add_column(column)
    for name, path in evaluations.items():
        summary = eval_summary(path)
        low, high = summary["success_ci95"]
        table.add_row(
            name,
            f"{summary['successes']}/{summary['episodes']}",
            f"{low:.2f}-{high:.2f}",
            stages_reached(summary),
            f"{summary.get('mean_max_reward', 0.0):.2f}",
        )
    Console().print(table)


def write_report(
    out: Path, size: RunSize, evaluations: dict[str, Path], timings: dict[str, float]
) -> Path:
    """A Markdown report linking the evaluation reports, videos and loss curves."""
    lines = [
        "# dexvla demo",
        "",
        f"Size `{size.name}` ({size.description}); policy preset `{size.preset}`; "
        f"{size.episodes} ALOHA demonstrations, stage 1 also on "
        f"{', '.join(size.pretrain_tasks)} ({size.pretrain_episodes} each); "
        f"training steps {size.steps[0]} / {size.steps[1]} / {size.steps[2]}.",
        "",
        f"## Closed loop on `{EVAL_TASK}`",
        "",
        "| policy | success | 95% interval | reward stages reached | mean max reward | report |",
        "|---|---|---|---|---|---|",
    ]
    for name, path in evaluations.items():
        summary = eval_summary(path)
        low, high = summary["success_ci95"]
        lines.append(
            f"| {name} | {summary['successes']}/{summary['episodes']} | {low:.2f}-{high:.2f} | "
            f"{stages_reached(summary)} | {summary.get('mean_max_reward', 0.0):.2f} | "
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

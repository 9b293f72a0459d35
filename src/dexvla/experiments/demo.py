"""`dexvla demo`: the suite `DEMO` (one DexVLA arm and the scripted expert on ALOHA transfer
cube) run by the benchmark runner into one directory, with a terminal table and report.md.
"""

from __future__ import annotations

from pathlib import Path

from dexvla.experiments.pipeline import (
    Execute,
    StepFailed,
    Train,
    eval_summary,
    stages_reached,
)
from dexvla.experiments.results import SCRIPTED
from dexvla.experiments.runner import SuiteRun
from dexvla.experiments.sizes import RunSize
from dexvla.experiments.suites import DEMO
from dexvla.io import atomic_write_text
from dexvla.train.metrics import LOSS_CURVE_FILE

EVAL_TASK = DEMO.tasks[0]


def demo_run(
    size: RunSize, out: Path, execute: Execute | None = None, argv: list[str] | None = None
) -> SuiteRun:
    """The demo suite at `size` in `out`, its results (results.md/json/png) in `out` too."""
    return SuiteRun(DEMO, size, 1, out, execute, argv, results=out, tag="demo")


def run_demo(
    size: RunSize,
    out: Path,
    execute: Execute | None = None,
    *,
    argv: list[str] | None = None,
    dry_run: bool = False,
) -> int:
    """Run (or with `dry_run`, print) every step of the demo; 1 when a step failed."""
    run = demo_run(size, out, execute, argv)
    plan = run.plan()
    if dry_run:
        run.pipeline.print_plan(plan)
        return 0
    try:
        run.run(plan)
    except StepFailed as error:
        print(f"[demo] {error}; re-run the same command to resume", flush=True)
        return 1
    evaluations = evaluation_dirs(run)
    report = write_report(run, [step for step in plan if isinstance(step, Train)], evaluations)
    print_summary(evaluations)
    print(f"\n[demo] report: {report}", flush=True)
    return 0


def evaluation_dirs(run: SuiteRun) -> dict[str, Path]:
    """Row name -> evaluation directory: the policy first, then the scripted ceiling."""
    (arm,) = DEMO.arms
    stages = f"stages {arm.stages[0]}-{arm.stages[-1]}"
    names = {arm.name: f"{arm.name} ({arm.policy_for(run.size)}, {stages})", SCRIPTED: SCRIPTED}
    dirs = {record["arm"]: run.out / record["eval_dir"] for record in run.records}
    return {names[key]: dirs[key] for key in names}


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


def write_report(run: SuiteRun, trains: list[Train], evaluations: dict[str, Path]) -> Path:
    """report.md: the success table, and links to the evaluation reports, the videos and
    the loss curves that exist."""
    out, size = run.out, run.size
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
        html = path / "report.html"
        link = f"[report]({html.relative_to(out)})" if html.is_file() else ""
        lines.append(
            f"| {name} | {summary['successes']}/{summary['episodes']} | {low:.2f}-{high:.2f} | "
            f"{stages_reached(summary)} | {summary.get('mean_max_reward', 0.0):.2f} | {link} |"
        )
    lines.append("")
    curves = [(train, train.out / LOSS_CURVE_FILE) for train in trains]
    curves = [(train, curve) for train, curve in curves if curve.is_file()]
    if curves:
        lines += ["## Training", ""]
        for train, curve in curves:
            stage = train.config.stage
            lines += [f"Stage {stage}: ![stage {stage} loss]({curve.relative_to(out)})", ""]
    videos = sorted(video for path in evaluations.values() for video in path.glob("videos/*.mp4"))
    if videos:
        lines += ["## Videos", ""]
        lines += [f"- [{video.name}]({video.relative_to(out)})" for video in videos]
        lines.append("")
    if run.pipeline.timings:
        lines += ["## Time per step (this run)", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {name} | {seconds:.0f} |" for name, seconds in run.pipeline.timings.items()]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path

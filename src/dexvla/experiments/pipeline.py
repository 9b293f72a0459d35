"""The package's own commands chained into a pipeline: collect, train a stage, evaluate.

`dexvla demo` and `dexvla benchmark` are both sequences of these steps. Each step is one
`dexvla ...` command line, printed before it runs and timed, and each one resumes on its own
(collection skips finished episodes, training continues from its last checkpoint, evaluation
skips finished episodes), so a pipeline interrupted anywhere continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Command = Callable[[list[str]], int]
"""Runs one `dexvla` command line (argv without the program name); returns its exit status."""


@dataclass(frozen=True)
class RunSize:
    """How much data, training and evaluation one pipeline run does."""

    name: str
    episodes: int  # target-task demonstrations
    pretrain_tasks: tuple[str, ...]  # stage 1's other tasks
    pretrain_episodes: int
    image_size: int
    steps: tuple[int, int, int]  # stages 1, 2, 3
    batch_size: int
    eval_episodes: int
    eval_max_steps: int | None
    workers: int
    preset: str = "tiny"
    description: str = ""
    train_options: tuple[str, ...] = ()  # extra `dexvla train` flags for every stage

    def __post_init__(self) -> None:
        for name in ("episodes", "pretrain_episodes", "eval_episodes", "workers", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if len(self.steps) != 3 or min(self.steps) < 1:
            raise ValueError(f"steps must be three positive numbers, got {self.steps}")


CI_SIZE = RunSize(
    name="ci",
    episodes=2,
    pretrain_tasks=("sawyer-reach",),
    pretrain_episodes=2,
    image_size=56,
    steps=(4, 4, 4),
    batch_size=2,
    eval_episodes=1,
    eval_max_steps=32,
    workers=1,
    description="the smallest run that exercises every step (CI)",
)


def add_size_arguments(
    parser: argparse.ArgumentParser, sizes: dict[str, RunSize], default: str
) -> None:
    """`--size` and the flags that change one of its fields (`size_from_args` applies them)."""
    choices = "; ".join(f"{name}: {size.description}" for name, size in sizes.items())
    parser.add_argument("--size", choices=tuple(sizes), default=default, help=choices)
    parser.add_argument("--episodes", type=int, help="target-task demonstrations to collect")
    parser.add_argument("--steps", type=int, nargs=3, metavar=("S1", "S2", "S3"))
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--eval-episodes", type=int)
    parser.add_argument("--workers", type=int, help="processes for collection and evaluation")
    parser.add_argument("--preset", help="policy preset (default tiny; e.g. dexvla-2b on a GPU)")


def size_from_args(sizes: dict[str, RunSize], args: argparse.Namespace) -> RunSize:
    """The chosen size with the fields given on the command line replaced (and validated)."""
    changes = {
        "episodes": args.episodes,
        "steps": tuple(args.steps) if args.steps else None,
        "batch_size": args.batch_size,
        "eval_episodes": args.eval_episodes,
        "workers": args.workers,
        "preset": args.preset,
    }
    return dataclasses.replace(
        sizes[args.size], **{k: v for k, v in changes.items() if v is not None}
    )


class StepFailed(RuntimeError):
    """A pipeline step exited with a non-zero status."""


class Pipeline:
    """Runs steps in order, printing each command line with `tag` and recording its time."""

    def __init__(self, tag: str, command: Command | None = None) -> None:
        if command is None:
            from dexvla.cli import main as command
        self.tag = tag
        self.command = command
        self.timings: dict[str, float] = {}

    def step(self, name: str, argv: list[str]) -> None:
        """Run one command; raise `StepFailed` (naming the step) when it fails."""
        print(f"\n[{self.tag}] {name}: dexvla {shlex.join(argv)}", flush=True)
        start = time.perf_counter()
        status = self.command(argv)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        if status:
            raise StepFailed(f"step {name!r} failed with status {status}")

    def collect(self, task: str, episodes: int, out: Path, image_size: int, workers: int) -> Path:
        """Scripted demonstrations of `task` into the dataset `out` (resumes)."""
        self.step(
            f"collect {task}",
            [
                "collect",
                "--task",
                task,
                "--episodes",
                str(episodes),
                "--out",
                str(out),
                "--workers",
                str(workers),
                "--image-size",
                str(image_size),
            ],
        )
        return out

    def train(
        self,
        stage: int,
        data: Sequence[Path],
        out: Path,
        *,
        steps: int,
        batch_size: int,
        policy: str = "tiny",
        init: Path | None = None,
        seed: int = 0,
        options: Sequence[str] = (),
        name: str | None = None,
    ) -> Path:
        """Train one stage of the tiny stage preset (or `policy`) into `out`; returns final/.

        A stage whose `final/config.json` exists is skipped; otherwise training resumes from
        the last checkpoint in `out`. `options` are extra `dexvla train` flags.
        """
        final = out / "final"
        label = name or f"train stage {stage}"
        if (final / "config.json").is_file():
            print(f"\n[{self.tag}] {label}: {final} exists, skipped", flush=True)
            return final
        argv = [
            "train",
            "--stage",
            str(stage),
            "--preset",
            f"tiny-stage{stage}",
            "--data",
            ",".join(str(path) for path in data),
            "--out",
            str(out),
            "--steps",
            str(steps),
            "--batch-size",
            str(batch_size),
            "--seed",
            str(seed),
            "--resume",
        ]
        if policy != "tiny":
            argv += ["--policy", policy]
        if init is not None:
            argv += ["--init", str(init)]
        self.step(label, argv + list(options))
        return final

    def evaluate(
        self,
        task: str,
        out: Path,
        *,
        episodes: int,
        image_size: int,
        workers: int,
        checkpoint: Path | None = None,
        max_steps: int | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Closed-loop episodes of `checkpoint` (None: the scripted expert); their summary."""
        argv = [
            "eval",
            "--task",
            task,
            "--episodes",
            str(episodes),
            "--workers",
            str(workers),
            "--image-size",
            str(image_size),
            "--out",
            str(out),
        ]
        argv += ["--checkpoint", str(checkpoint)] if checkpoint else ["--policy", "scripted"]
        if max_steps:
            argv += ["--max-steps", str(max_steps)]
        self.step(name or f"evaluate on {task}", argv)
        return eval_summary(out)


def eval_summary(out: Path) -> dict[str, Any]:
    """The summary `dexvla eval` wrote to `out/eval_info.json`."""
    return json.loads((out / "eval_info.json").read_text())["summary"]


def stages_reached(summary: dict[str, Any]) -> str:
    """'touched 40%, lifted 10%, ...': the fraction of episodes reaching each reward stage."""
    stages = summary.get("stage_reached", {})
    return ", ".join(f"{s['name']} {s['fraction']:.0%}" for s in stages.values())

"""Run sizes: how much data, training and evaluation one `dexvla demo` or `dexvla benchmark` does.

`RUN_SIZES` is the one registry. Each command offers a few of them under short `--size` names:
`dexvla demo --size ci|cpu|gpu` runs `ci`, `demo-cpu`, `demo-gpu` (`DEMO_SIZES`) and
`dexvla benchmark --size ci|cpu|full` runs `ci`, `bench-cpu`, `bench-full` (`BENCH_SIZES`).
The two `cpu` sizes differ on purpose: the demo's is one quick end-to-end pass, the
benchmark's is the protocol of the committed results (more demonstrations and evaluations).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunSize:
    """How much data, training and evaluation one pipeline run does.

    `overrides` change the stage recipe of every trained stage: StageConfig field -> value,
    with TrainConfig fields in a mapping under "train" (e.g. {"train": {"lr": 1e-4}}).
    """

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
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("episodes", "pretrain_episodes", "eval_episodes", "workers", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if len(self.steps) != 3 or min(self.steps) < 1:
            raise ValueError(f"steps must be three positive numbers, got {self.steps}")


CPU_RECIPE: Mapping[str, Any] = {
    "prediction_type": "sample",
    "noise_samples": 2,
    "train": {"save_every": 500, "log_every": 50},
}
"""The CPU sizes' stage recipe, chosen on validation episodes (docs/evaluation.md): the expert
predicts the clean chunk (0/10 -> 9/10 against predicting the noise at the same budget), with 2
noise draws per observation (1.3x the steps of 4 in the same time). A checkpoint every 500 steps
(not the tiny presets' 100) and a log line every 50 keep the step's time for training."""

RUN_SIZES: dict[str, RunSize] = {
    size.name: size
    for size in (
        RunSize(
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
        ),
        RunSize(
            name="demo-cpu",
            episodes=50,
            pretrain_tasks=("sawyer-reach", "sawyer-pick-place"),
            pretrain_episodes=10,
            image_size=84,
            steps=(500, 4000, 300),
            batch_size=8,
            eval_episodes=10,
            eval_max_steps=None,
            workers=2,
            description="the demo's default: about 20 minutes on a 2-core CPU",
            overrides=CPU_RECIPE,
        ),
        RunSize(
            name="demo-gpu",
            episodes=50,
            pretrain_tasks=("sawyer-reach", "sawyer-pick-place", "sawyer-push", "hand-pick-place"),
            pretrain_episodes=50,
            image_size=128,
            steps=(5000, 10000, 5000),
            batch_size=32,
            eval_episodes=50,
            eval_max_steps=None,
            workers=4,
            description="the demo with more data and steps, for a machine with a GPU",
        ),
        RunSize(
            name="bench-cpu",
            episodes=100,
            pretrain_tasks=("sawyer-reach", "sawyer-pick-place"),
            pretrain_episodes=10,
            image_size=84,
            steps=(1000, 4000, 500),
            batch_size=8,
            eval_episodes=50,
            eval_max_steps=None,
            workers=2,
            description="100 demos a task, the demo's recipe, 50 evaluation episodes (2-core CPU)",
            overrides=CPU_RECIPE,
        ),
        RunSize(
            name="bench-full",
            episodes=50,
            pretrain_tasks=("sawyer-reach", "sawyer-pick-place", "sawyer-push"),
            pretrain_episodes=50,
            image_size=128,
            steps=(10000, 20000, 10000),
            batch_size=32,
            eval_episodes=50,
            eval_max_steps=None,
            workers=4,
            description="the issue's protocol: 50 demonstrations, 50 evaluation episodes (GPU)",
        ),
    )
}

DEMO_SIZES: dict[str, RunSize] = {
    "ci": RUN_SIZES["ci"],
    "cpu": RUN_SIZES["demo-cpu"],
    "gpu": RUN_SIZES["demo-gpu"],
}
"""`dexvla demo --size` choices."""

BENCH_SIZES: dict[str, RunSize] = {
    "ci": RUN_SIZES["ci"],
    "cpu": RUN_SIZES["bench-cpu"],
    "full": RUN_SIZES["bench-full"],
}
"""`dexvla benchmark --size` choices."""


def add_size_arguments(
    parser: argparse.ArgumentParser, sizes: Mapping[str, RunSize], default: str
) -> None:
    """`--size` and the flags that change one of its fields (`size_from_args` applies them)."""
    choices = "; ".join(
        f"{choice}{'' if choice == size.name else f' (`{size.name}`)'}: {size.description}"
        for choice, size in sizes.items()
    )
    parser.add_argument("--size", choices=tuple(sizes), default=default, help=choices)
    parser.add_argument("--episodes", type=int, help="target-task demonstrations to collect")
    parser.add_argument("--steps", type=int, nargs=3, metavar=("S1", "S2", "S3"))
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--eval-episodes", type=int)
    parser.add_argument("--workers", type=int, help="processes for collection and evaluation")
    parser.add_argument("--preset", help="policy preset (default tiny; e.g. dexvla-2b on a GPU)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (every step with its resolved recipe) and exit without running",
    )


def size_from_args(sizes: Mapping[str, RunSize], args: argparse.Namespace) -> RunSize:
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

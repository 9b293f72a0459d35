"""The package's own steps chained into a pipeline: collect, train a stage, evaluate.

`dexvla demo` and `dexvla benchmark` are both a plan (a list of these steps, each with its
resolved parameters: the `StageConfig` a training step runs, the `EvalConfig` an evaluation
runs) that a `Pipeline` runs in order, printing each step before it runs and timing it. Every
step resumes on its own (collection skips finished episodes, a finished stage is skipped and an
unfinished one continues from its last checkpoint, evaluation skips finished episodes), so a
pipeline interrupted anywhere continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dexvla.eval.evaluate import EvalConfig
from dexvla.io import read_json
from dexvla.schema import unknown_fields
from dexvla.train.stages import FINAL_DIR, StageConfig, stage_preset_for


class StepFailed(RuntimeError):
    """A pipeline step failed; the message names the step."""


@dataclass(frozen=True)
class Collect:
    """Scripted demonstrations of `task` into the dataset `out` (resumes)."""

    label: str
    task: str
    episodes: int
    out: Path
    image_size: int
    workers: int

    def describe(self) -> str:
        return (
            f"{self.episodes} scripted episodes at {self.image_size} px into {self.out} "
            f"({self.workers} worker(s))"
        )

    def details(self) -> str:
        return ""

    def skip_reason(self) -> str | None:
        return None

    def run(self) -> None:
        from dexvla.sim.collect import collect
        from dexvla.sim.registry import parse_image_size

        report = collect(
            self.task,
            episodes=self.episodes,
            out=self.out,
            workers=self.workers,
            image_size=parse_image_size(self.image_size),
        )
        print(
            f"{self.task}: {report.new_episodes} new, {report.total_episodes} in {self.out}; "
            f"{len(report.failed_seeds)} failed seed(s)",
            flush=True,
        )
        if report.total_episodes < self.episodes:
            raise StepFailed(f"only {report.total_episodes} of {self.episodes} episodes")


@dataclass(frozen=True)
class Train:
    """One stage trained with `config` on `data` into `out`, from `init` (a previous final/)."""

    label: str
    config: StageConfig
    data: tuple[Path, ...]
    out: Path
    init: Path | None = None

    @property
    def final(self) -> Path:
        return self.out / FINAL_DIR

    def describe(self) -> str:
        start = f"from {self.init}" if self.init else "from scratch"
        return (
            f"recipe {self.config.name} ({self.config.train.steps} steps at batch "
            f"{self.config.train.batch_size}, seed {self.config.train.seed}) on "
            f"{', '.join(map(str, self.data))}, {start}, into {self.out}"
        )

    def details(self) -> str:
        config, train = self.config, self.config.train
        heads = ",".join(config.policy_config().embodiments)
        return (
            f"policy {config.policy}, precision {train.precision}, lr {train.lr:g} "
            f"{train.schedule} (warmup {train.warmup_steps}), ema {train.ema}, vision "
            f"{'frozen' if config.freeze_vision else 'trained'}, llm {config.llm}, heads "
            f"{heads}, {config.noise_samples} noise draw(s), reasoning "
            f"{'on' if config.use_reasoning else 'off'}"
        )

    def skip_reason(self) -> str | None:
        """A stage whose final/ is written is done (run_stage writes config.json last)."""
        final = self.final / "config.json"
        return f"{self.final} exists" if final.is_file() else None

    def run(self) -> None:
        from dexvla.train.stages import run_stage

        final = run_stage(self.config, self.data, self.out, init=self.init, resume=True)
        print(f"stage {self.config.stage} done: {final}", flush=True)


@dataclass(frozen=True)
class Evaluate:
    """Closed-loop episodes of `config`; `arm` and `seed` name the results row it fills."""

    label: str
    config: EvalConfig
    arm: str
    seed: int | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def describe(self) -> str:
        config = self.config
        policy = "the scripted expert" if config.policy == "scripted" else str(config.checkpoint)
        return (
            f"{config.episodes} episode(s) of {policy} on {config.task} from seed {config.seed} "
            f"at {config.image_size} px into {config.out}"
        )

    def details(self) -> str:
        limit = self.config.max_steps or "the task's"
        return f"{self.config.workers} worker(s), episode limit {limit}"

    def skip_reason(self) -> str | None:
        return None

    def run(self) -> None:
        from dexvla.eval.evaluate import evaluate

        summary = evaluate(self.config)["summary"]
        print(
            f"{self.config.task}: success {summary['successes']}/{summary['episodes']}",
            flush=True,
        )


Step = Collect | Train | Evaluate
Execute = Callable[[Step], None]
"""Runs one step (the default: `step.run()`); tests pass a stand-in."""


def stage_recipe(
    policy: str,
    stage: int,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    overrides: Mapping[str, Any],
) -> StageConfig:
    """The stage preset that trains `policy` with this run's steps, batch, seed and overrides.

    `overrides` are StageConfig field -> value, TrainConfig fields in a mapping under "train";
    they apply last (after steps, batch and seed).
    """
    preset = stage_preset_for(policy, stage)
    train = {"steps": steps, "batch_size": batch_size, "seed": seed, **overrides.get("train", {})}
    return with_overrides(preset, {**overrides, "train": train})


def with_overrides(config: StageConfig, overrides: Mapping[str, Any]) -> StageConfig:
    """`config` with StageConfig fields (and TrainConfig fields under "train") replaced."""
    changes = dict(overrides)
    train_changes = dict(changes.pop("train", {}))
    unknown = unknown_fields(StageConfig, changes)
    unknown += [f"train.{name}" for name in unknown_fields(type(config.train), train_changes)]
    if unknown:
        raise ValueError(f"stage recipe {config.name!r}: unknown override(s) {unknown}")
    train = dataclasses.replace(config.train, **train_changes)
    return dataclasses.replace(config, train=train, **changes)


def run_step(step: Step) -> None:
    step.run()


class Pipeline:
    """Runs steps in order, printing each with `tag` and recording its time."""

    def __init__(self, tag: str, execute: Execute | None = None) -> None:
        self.tag = tag
        self.execute = execute or run_step
        self.timings: dict[str, float] = {}

    def run(self, step: Step) -> None:
        """Run one step (or skip it when done); raise `StepFailed`, naming it, on failure."""
        reason = step.skip_reason()
        if reason:
            print(f"\n[{self.tag}] {step.label}: {reason}, skipped", flush=True)
            return
        print(f"\n[{self.tag}] {step.label}: {step.describe()}", flush=True)
        start = time.perf_counter()
        try:
            self.execute(step)
        except (StepFailed, ValueError, KeyError, FileNotFoundError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise StepFailed(f"step {step.label!r} failed: {message}") from error
        finally:
            self.timings[step.label] = (
                self.timings.get(step.label, 0.0) + time.perf_counter() - start
            )

    def print_plan(self, steps: Sequence[Step]) -> None:
        """Every step with its resolved parameters, and whether it is already done."""
        for number, step in enumerate(steps, 1):
            reason = step.skip_reason()
            done = f" [done: {reason}]" if reason else ""
            print(f"[{self.tag}] {number}. {step.label}{done}: {step.describe()}")
            if step.details():
                print(f"      {step.details()}")


def eval_summary(out: Path) -> dict[str, Any]:
    """The summary an evaluation wrote to `out/eval_info.json`."""
    return read_json(Path(out) / "eval_info.json", "evaluation info")["summary"]


def stages_reached(summary: dict[str, Any]) -> str:
    """'touched 40%, lifted 10%, ...': the fraction of episodes reaching each reward stage."""
    stages = summary.get("stage_reached", {})
    return ", ".join(f"{s['name']} {s['fraction']:.0%}" for s in stages.values())

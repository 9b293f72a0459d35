"""Run a suite: collect, train every arm on every task for every seed, evaluate, tabulate.

Layout under `out` (every step resumes; finished steps are skipped on a second run):

    data/<task>-<N>ep-<px>px/                  scripted demonstrations (shared by all arms)
    runs/stage1/<recipe>/seed<k>/              stage-1 runs (shared by arms with one recipe)
    runs/<task>/<recipe>/seed<k>/stage{2,3}/   the arm's later stages
    runs/<task>/<recipe>/seed<k>/eval-<E>ep/   its closed-loop evaluation
    runs/<task>/scripted/eval-<E>ep/           the scripted expert (a ceiling)
    <suite>/results.{json,md,png}              the table, its provenance and the plot

`<recipe>` is readable (preset, stages, reasoning, demonstrations) plus a hash of everything
that changes the result, so two arms with one recipe share their runs and two sizes never do.
The training seed is `k`; the evaluation episodes start from the same seeds for every arm
and training seed (paired comparisons), far from the collection seeds.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dexvla.eval.evaluate import INFO_FILE, EvalConfig
from dexvla.experiments.pipeline import (
    Collect,
    Evaluate,
    Execute,
    Pipeline,
    Step,
    StepFailed,
    Train,
    eval_summary,
    stage_recipe,
)
from dexvla.experiments.results import (
    SCRIPTED,
    aggregate,
    compare_arms,
    git_revision,
    machine,
    markdown,
    plot_results,
    revision_note,
)
from dexvla.experiments.sizes import RunSize
from dexvla.experiments.suites import Arm, Suite
from dexvla.io import atomic_write_json, atomic_write_text, read_json
from dexvla.policy.configuration import POSITION_CONDITIONS
from dexvla.train.stages import StageConfig

EVAL_VIDEOS = 2  # mp4s per evaluation, as `dexvla eval` records by default
PROVENANCE = ("command", "date", "finished", "machine", "git", "git_note", "timings_s")
UNRECORDED = {  # the provenance of runs whose results.json is gone
    **dict.fromkeys(("command", "date", "finished"), "unknown"),
    "git": None,
    "machine": {},
    "timings_s": {},
    "git_note": "git revision of the runs unknown (no earlier results.json)",
}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _revision(out: Path) -> dict[str, Any]:
    """The git revision of the checkout holding `out`, and the sentence results.md gives it."""
    revision = git_revision(out)
    return {"git": revision, "git_note": revision_note(revision, out.resolve())}


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


class SuiteRun:
    """One suite at one size for `seeds` training seeds, in `out`.

    `results` is where results.{json,md,png} go (default `out/<suite>`); `execute` runs a step
    (default: for real; tests pass a stand-in); `tag` prefixes every printed step.
    """

    def __init__(
        self,
        suite: Suite,
        size: RunSize,
        seeds: int,
        out: Path,
        execute: Execute | None = None,
        argv: Sequence[str] | None = None,
        *,
        results: Path | None = None,
        tag: str = "benchmark",
    ) -> None:
        if seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {seeds}")
        self.suite, self.size, self.seeds, self.out = suite, size, seeds, Path(out)
        self.results = Path(results) if results is not None else self.out / suite.name
        self.pipeline = Pipeline(tag, execute)
        self.records: list[dict[str, Any]] = []
        self.command = "dexvla " + shlex.join(argv) if argv else None
        self.started: dict[str, Any] = {}  # provenance, recorded when the run starts

    # ------------------------------------------------------------------------------- plan
    def collect(self, task: str, episodes: int) -> Collect:
        size = self.size
        return Collect(
            f"collect {task}",
            task,
            episodes,
            self.out / "data" / f"{task}-{episodes}ep-{size.image_size}px",
            size.image_size,
            size.workers,
        )

    def _stage1_episodes(self, arm: Arm, task: str, name: str) -> int:
        if name == task:
            return arm.episodes(self.size)
        if arm.pretrain_tasks and name in arm.pretrain_tasks:
            return self.size.episodes
        return self.size.pretrain_episodes

    def recipe(self, arm: Arm, stage: int, seed: int, overrides: dict[str, Any]) -> StageConfig:
        """The StageConfig of `stage` for `arm`: its preset, the size, the overrides."""
        size = self.size
        return stage_recipe(
            arm.policy_for(size),
            stage,
            steps=size.steps[stage - 1],
            batch_size=size.batch_size,
            seed=seed,
            overrides={**size.overrides, **overrides},
        )

    def stage1(self, arm: Arm, data: list[Collect], seed: int) -> Train:
        size = self.size
        overrides: dict[str, Any] = {}
        if arm.stage1_embodiments:
            overrides["embodiments"] = arm.stage1_embodiments
        if arm.env_state in POSITION_CONDITIONS:  # the expert learns from positions already
            overrides["env_state"] = arm.env_state
        config = self.recipe(arm, 1, seed, overrides)
        recipe = {
            "policy": arm.policy_for(size),
            "data": [step.out.name for step in data],
            "steps": size.steps[0],
            "batch_size": size.batch_size,
            "overrides": {**size.overrides, **overrides},
        }
        out = self.out / "runs" / "stage1" / f"{recipe['policy']}-{_digest(recipe)}" / f"seed{seed}"
        return Train(
            f"stage 1 for {arm.name} (seed {seed})",
            config,
            tuple(step.out for step in data),
            out,
        )

    def arm_directory(self, arm: Arm, task: str) -> Path:
        """runs/<task>/<readable recipe>-<hash of the recipe and the size>.

        An arm naming the size's own preset hashes as one that names none: the two train the
        same policy, so they share their runs."""
        size = self.size
        fields = {k: v for k, v in dataclasses.asdict(arm).items() if k != "name"}
        if arm.policy == size.preset:
            fields["policy"] = None
        recipe = {
            "arm": fields,
            "policy": arm.policy_for(size),
            "size": {k: v for k, v in dataclasses.asdict(size).items() if k != "description"},
        }
        label = "-".join(
            [
                recipe["policy"],
                "s" + "".join(map(str, arm.stages)),
                "reasoning" if arm.reasoning else "no-reasoning",
                *([f"env-{arm.env_state}"] if arm.env_state != "none" else []),
                f"{arm.episodes(size)}ep",
            ]
        )
        return self.out / "runs" / task / f"{label}-{_digest(recipe)}"

    def evaluation(
        self, task: str, out: Path, arm: str, seed: int | None, checkpoint: Path | None
    ) -> Evaluate:
        size = self.size
        config = EvalConfig(
            task=task,
            episodes=size.eval_episodes,
            out=out,
            checkpoint=checkpoint,
            policy="checkpoint" if checkpoint else "scripted",
            workers=size.workers,
            videos=EVAL_VIDEOS,
            max_steps=size.eval_max_steps,
            image_size=size.image_size,
            threads=1 if size.workers > 1 else None,
        )
        name = "the scripted expert" if checkpoint is None else arm
        label = f"evaluate {name} on {task}" + (f" (seed {seed})" if seed is not None else "")
        return Evaluate(label, config, arm, seed)

    def arm_steps(self, arm: Arm, task: str, seed: int) -> list[Step]:
        """Collect, train the arm's stages and evaluate it on `task` with training seed `seed`."""
        from dexvla.sim.registry import get_task

        size = self.size
        target = self.collect(task, arm.episodes(size))
        steps: list[Step] = [target]
        init = None
        if 1 in arm.stages:
            data = [
                self.collect(name, self._stage1_episodes(arm, task, name))
                for name in arm.stage1_tasks(size, task)
            ]
            stage1 = self.stage1(arm, data, seed)
            steps += [*data, stage1]
            init = stage1.final
        overrides: dict[str, Any] = {}
        if arm.task_heads:
            overrides["embodiments"] = (get_task(task).embodiment,)
        if not arm.reasoning:
            overrides["use_reasoning"] = False
        if arm.env_state != "none":
            overrides["env_state"] = arm.env_state
        run = self.arm_directory(arm, task) / f"seed{seed}"
        for stage in (stage for stage in arm.stages if stage != 1):
            train = Train(
                f"stage {stage} for {arm.name} on {task} (seed {seed})",
                self.recipe(arm, stage, seed, overrides),
                (target.out,),
                run / f"stage{stage}",
                init,
            )
            steps.append(train)
            init = train.final
        out = run / f"eval-{size.eval_episodes}ep"
        steps.append(self.evaluation(task, out, arm.name, seed, init))
        return steps

    def plan(self) -> list[Step]:
        """Every step in order; a step sharing an output directory with an earlier one (the
        same dataset or the same stage-1 run) appears once."""
        steps: dict[Path, Step] = {}
        for task in self.suite.tasks:
            scripted = self.out / "runs" / task / "scripted" / f"eval-{self.size.eval_episodes}ep"
            planned: list[Step] = [self.evaluation(task, scripted, SCRIPTED, None, None)]
            for seed in range(self.seeds):
                for arm in self.suite.arms:
                    planned += self.arm_steps(arm, task, seed)
            for step in planned:
                steps.setdefault(step.out, step)
        return list(steps.values())

    # -------------------------------------------------------------------------------- run
    def run(self, plan: Sequence[Step] | None = None) -> Path:
        """Every step in order; rewrites the results after each arm's evaluation.

        Returns results.md. `plan` is `self.plan()` unless given.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = {
            "command": self.command,
            "date": _now(),
            "machine": machine(),
            **_revision(self.out),
        }
        for step in self.plan() if plan is None else plan:
            self.pipeline.run(step)
            if isinstance(step, Evaluate):
                self.records.append(self.record(step))
                if step.arm != SCRIPTED:
                    self.write_results()
        return self.write_results()

    def report(self, plan: Sequence[Step] | None = None) -> Path:
        """Tabulate the finished evaluations again, running nothing (`--report-only`).

        Re-renders results.md/json/png with the current code's tables while keeping the
        provenance (command, date, machine, git revision) and step timings of the run that
        made them, as results.json recorded them. Unfinished evaluations are left out and
        named; with none finished this raises StepFailed.
        """
        previous = self.results / "results.json"
        recorded = read_json(previous, "benchmark results") if previous.is_file() else {}
        self.started = {
            **UNRECORDED,
            **{key: recorded[key] for key in PROVENANCE if key in recorded},
        }
        self.started["rendered"] = {"date": _now(), **_revision(self.out)}
        missing = []
        for step in self.plan() if plan is None else plan:
            if isinstance(step, Evaluate):
                record = self.record(step) if (step.out / INFO_FILE).is_file() else None
                if record and record["summary"]["episodes"] == step.config.episodes:
                    self.records.append(record)
                else:
                    missing.append(step.label)
        if missing:
            print(f"[{self.pipeline.tag}] not finished, left out: {'; '.join(missing)}")
        if not any(record["arm"] != SCRIPTED for record in self.records):
            raise StepFailed(f"no finished evaluation of an arm under {self.out}: run the suite")
        return self.write_results()

    def record(self, step: Evaluate) -> dict[str, Any]:
        """The results' entry for one finished evaluation."""
        return {
            "task": step.config.task,
            "arm": step.arm,
            "seed": step.seed,
            "eval_dir": str(step.out.relative_to(self.out)),
            "summary": eval_summary(step.out),
        }

    # ---------------------------------------------------------------------------- results
    def rows(self) -> list[dict[str, Any]]:
        """One row per (task, arm): success mean over seeds with its 95% interval, stages."""
        rows = []
        for task in self.suite.tasks:
            for arm in (SCRIPTED, *(a.name for a in self.suite.arms)):
                found = [r for r in self.records if r["task"] == task and r["arm"] == arm]
                if found:
                    rows.append(aggregate(task, arm, [r["summary"] for r in found]))
        return rows

    def write_results(self) -> Path:
        rows = self.rows()
        data = {
            "suite": self.suite.name,
            "description": self.suite.description,
            "size": dataclasses.asdict(self.size),
            "seeds": self.seeds,
            "reference": {"name": self.suite.reference_name, "success": self.suite.reference},
            "notes": self.suite.notes,
            "finished": _now(),
            "timings_s": self.pipeline.timings,
            **self.started,
            "rows": rows,
            "comparisons": compare_arms(rows),
            "runs": self.records,
        }
        atomic_write_json(self.results / "results.json", data)
        plot_results(self.suite, rows, self.results / "results.png")
        path = self.results / "results.md"
        atomic_write_text(path, markdown(self.suite, data))
        return path

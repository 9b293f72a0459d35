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
import math
import os
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from dexvla.eval.report import wilson_interval, write_json
from dexvla.experiments.pipeline import Command, Pipeline, RunSize
from dexvla.experiments.suites import Arm, Suite
from dexvla.io import atomic_write, atomic_write_bytes

SCRIPTED = "scripted expert (ceiling)"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


class SuiteRun:
    """One suite at one size for `seeds` training seeds, in `out`."""

    def __init__(
        self,
        suite: Suite,
        size: RunSize,
        seeds: int,
        out: Path,
        command: Command | None = None,
        argv: list[str] | None = None,
    ) -> None:
        if seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {seeds}")
        self.suite, self.size, self.seeds, self.out = suite, size, seeds, Path(out)
        self.pipeline = Pipeline("benchmark", command)
        self.records: list[dict[str, Any]] = []
        self._datasets: dict[tuple[str, int], Path] = {}
        self.started = {
            "command": "dexvla " + shlex.join(argv) if argv else None,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "git": git_revision(),
        }

    # ------------------------------------------------------------------------------ steps
    def dataset(self, task: str, episodes: int) -> Path:
        """The dataset of `episodes` scripted demonstrations of `task` (collected once per run)."""
        if (task, episodes) not in self._datasets:
            size = self.size
            path = self.out / "data" / f"{task}-{episodes}ep-{size.image_size}px"
            self._datasets[task, episodes] = self.pipeline.collect(
                task, episodes, path, size.image_size, size.workers
            )
        return self._datasets[task, episodes]

    def _stage1_episodes(self, arm: Arm, task: str, name: str) -> int:
        if name == task:
            return arm.episodes(self.size)
        if arm.pretrain_tasks and name in arm.pretrain_tasks:
            return self.size.episodes
        return self.size.pretrain_episodes

    def stage1(self, arm: Arm, task: str, seed: int) -> Path:
        size = self.size
        data = [
            self.dataset(name, self._stage1_episodes(arm, task, name))
            for name in arm.stage1_tasks(size, task)
        ]
        options = list(size.train_options)
        if arm.stage1_embodiments:
            options += ["--embodiments", ",".join(arm.stage1_embodiments)]
        recipe = {
            "policy": arm.policy_for(size),
            "data": [path.name for path in data],
            "steps": size.steps[0],
            "batch_size": size.batch_size,
            "options": options,
        }
        out = self.out / "runs" / "stage1" / f"{recipe['policy']}-{_digest(recipe)}" / f"seed{seed}"
        return self.pipeline.train(
            1,
            data,
            out,
            steps=size.steps[0],
            batch_size=size.batch_size,
            policy=recipe["policy"],
            seed=seed,
            options=options,
            name=f"stage 1 for {arm.name} (seed {seed})",
        )

    def arm_directory(self, arm: Arm, task: str) -> Path:
        """runs/<task>/<readable recipe>-<hash of the recipe and the size>."""
        size = self.size
        recipe = {
            "arm": {k: v for k, v in dataclasses.asdict(arm).items() if k != "name"},
            "policy": arm.policy_for(size),
            "size": {k: v for k, v in dataclasses.asdict(size).items() if k != "description"},
        }
        label = "-".join(
            [
                recipe["policy"],
                "s" + "".join(map(str, arm.stages)),
                "reasoning" if arm.reasoning else "no-reasoning",
                f"{arm.episodes(size)}ep",
            ]
        )
        return self.out / "runs" / task / f"{label}-{_digest(recipe)}"

    def train_and_evaluate(self, arm: Arm, task: str, seed: int) -> dict[str, Any]:
        from dexvla.sim.registry import get_task

        size = self.size
        run = self.arm_directory(arm, task) / f"seed{seed}"
        target = self.dataset(task, arm.episodes(size))
        init = self.stage1(arm, task, seed) if 1 in arm.stages else None
        options = [*size.train_options, "--embodiments", get_task(task).embodiment]
        if not arm.reasoning:
            options.append("--no-reasoning")
        for stage in (stage for stage in arm.stages if stage != 1):
            init = self.pipeline.train(
                stage,
                [target],
                run / f"stage{stage}",
                steps=size.steps[stage - 1],
                batch_size=size.batch_size,
                policy=arm.policy_for(size),
                init=init,
                seed=seed,
                options=options,
                name=f"stage {stage} for {arm.name} on {task} (seed {seed})",
            )
        return self.pipeline.evaluate(
            task,
            run / f"eval-{size.eval_episodes}ep",
            checkpoint=init,
            episodes=size.eval_episodes,
            image_size=size.image_size,
            workers=size.workers,
            max_steps=size.eval_max_steps,
            name=f"evaluate {arm.name} on {task} (seed {seed})",
        )

    def scripted(self, task: str) -> dict[str, Any]:
        size = self.size
        return self.pipeline.evaluate(
            task,
            self.out / "runs" / task / "scripted" / f"eval-{size.eval_episodes}ep",
            episodes=size.eval_episodes,
            image_size=size.image_size,
            workers=size.workers,
            max_steps=size.eval_max_steps,
            name=f"evaluate the scripted expert on {task}",
        )

    def run(self) -> Path:
        """Every step in order; rewrites the results after each evaluation. Returns results.md."""
        for task in self.suite.tasks:
            self.records.append(
                {"task": task, "arm": SCRIPTED, "seed": None, "summary": self.scripted(task)}
            )
            for seed in range(self.seeds):
                for arm in self.suite.arms:
                    summary = self.train_and_evaluate(arm, task, seed)
                    self.records.append(
                        {"task": task, "arm": arm.name, "seed": seed, "summary": summary}
                    )
                    self.write_results()
        return self.write_results()

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
        directory = self.out / self.suite.name
        rows = self.rows()
        data = {
            "suite": self.suite.name,
            "description": self.suite.description,
            "size": dataclasses.asdict(self.size),
            "seeds": self.seeds,
            "reference": {"name": self.suite.reference_name, "success": self.suite.reference},
            "notes": self.suite.notes,
            **self.started,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "rows": rows,
            "runs": self.records,
            "timings_s": self.pipeline.timings,
        }
        write_json(directory / "results.json", data)
        plot_results(self.suite, rows, directory / "results.png")
        path = directory / "results.md"
        atomic_write_bytes(path, markdown(self.suite, data).encode())
        return path


def aggregate(task: str, arm: str, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean success over seeds with a 95% interval, and the reward stages reached.

    The Wilson interval over all episodes is the floor; with two or more seeds the interval
    also covers Student's t over the per-seed rates (the seed-to-seed spread), so seeds that
    happen to agree (e.g. all 0/20) never give a zero-width interval.
    """
    rates = np.array([s["success_rate"] for s in summaries], dtype=np.float64)
    episodes = sum(s["episodes"] for s in summaries)
    successes = sum(s["successes"] for s in summaries)
    (low, high), method = wilson_interval(successes, episodes), "Wilson over episodes"
    if len(rates) >= 2:
        from scipy import stats

        half = stats.t.ppf(0.975, len(rates) - 1) * rates.std(ddof=1) / math.sqrt(len(rates))
        low, high = min(low, rates.mean() - half), max(high, rates.mean() + half)
        method = "t over seeds, at least Wilson"
    stage_names: dict[str, str] = {}
    fractions: dict[str, list[float]] = {}
    for summary in summaries:
        for key, stage in summary.get("stage_reached", {}).items():
            stage_names[key] = stage["name"]
            fractions.setdefault(key, []).append(stage["fraction"])
    return {
        "task": task,
        "arm": arm,
        "seeds": len(summaries),
        "episodes": episodes,
        "successes": successes,
        "success_mean": float(rates.mean()),
        "success_per_seed": rates.tolist(),
        "ci95": [max(0.0, float(low)), min(1.0, float(high))],
        "ci_method": method,
        "stage_reached": {
            stage_names[key]: float(np.mean(values)) for key, values in fractions.items()
        },
        "mean_max_reward": float(np.mean([s.get("mean_max_reward", 0.0) for s in summaries])),
    }


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_revision() -> str | None:
    """HEAD of the source checkout, with '+dirty' when tracked files have changes."""
    root = Path(__file__).resolve().parents[3]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def markdown(suite: Suite, data: dict[str, Any]) -> str:
    size = data["size"]
    reference = suite.reference
    lines = [
        f"# Benchmark `{suite.name}`",
        "",
        suite.description[0].upper() + suite.description[1:] + ".",
        "",
        f"- command: `{data['command']}`",
        f"- started {data['date']}, finished {data['finished']}; git revision `{data['git']}`",
        f"- machine: {', '.join(f'{k} {v}' for k, v in data['machine'].items())}",
        f"- size `{size['name']}`: {size['episodes']} demonstrations per task, "
        f"{size['image_size']} px cameras, training steps {size['steps'][0]} / "
        f"{size['steps'][1]} / {size['steps'][2]} at batch {size['batch_size']}, "
        f"{size['eval_episodes']} evaluation episodes per run, {data['seeds']} training seed(s)",
        "",
        "| task | arm | success (mean over seeds) | 95% interval | per seed | reward stages "
        "reached | mean max reward |" + (f" {suite.reference_name} |" if reference else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if reference else ""),
    ]
    for row in data["rows"]:
        low, high = row["ci95"]
        stages = ", ".join(f"{name} {value:.0%}" for name, value in row["stage_reached"].items())
        per_seed = " / ".join(f"{rate:.2f}" for rate in row["success_per_seed"])
        line = (
            f"| {row['task']} | {row['arm']} | {row['success_mean']:.2f} "
            f"({row['successes']}/{row['episodes']}) | {low:.2f}-{high:.2f} ({row['ci_method']}) "
            f"| {per_seed} | {stages} | {row['mean_max_reward']:.2f} |"
        )
        if reference:
            value = reference.get(row["task"])
            line += f" {value:.2f} |" if value is not None and row["arm"] != SCRIPTED else " |"
        lines.append(line)
    if suite.notes:
        lines += ["", suite.notes]
    lines += ["", "![results](results.png)", ""]
    return "\n".join(lines)


def plot_results(suite: Suite, rows: list[dict[str, Any]], path: Path) -> None:
    """Per task: success (bars, 95% interval, one dot per seed, the reference as a line) on
    top, and below it the share of episodes reaching each reward stage (partial progress)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [task for task in suite.tasks if any(r["task"] == task for r in rows)]
    if not tasks:
        return
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 7), squeeze=False)
    for column, task in enumerate(tasks):
        top, bottom = axes[0][column], axes[1][column]
        task_rows = [r for r in rows if r["task"] == task]
        x = np.arange(len(task_rows))
        means = [r["success_mean"] for r in task_rows]
        low = [r["success_mean"] - r["ci95"][0] for r in task_rows]
        high = [r["ci95"][1] - r["success_mean"] for r in task_rows]
        top.bar(x, means, yerr=[low, high], capsize=4, color="tab:blue", alpha=0.7)
        for i, row in enumerate(task_rows):
            top.scatter([i] * len(row["success_per_seed"]), row["success_per_seed"], c="k", s=8)
        if task in suite.reference:
            top.axhline(suite.reference[task], color="tab:red", ls="--", label=suite.reference_name)
            top.legend(fontsize=7)
        top.set_title(task)
        top.set_ylabel("success rate (95% interval)")
        stages = list(dict.fromkeys(name for r in task_rows for name in r["stage_reached"]))
        width = 0.8 / max(1, len(stages))
        for k, stage in enumerate(stages):
            values = [r["stage_reached"].get(stage, 0.0) for r in task_rows]
            bottom.bar(x - 0.4 + width * (k + 0.5), values, width, label=stage)
        bottom.set_ylabel("episodes reaching the stage")
        bottom.legend(fontsize=7)
        for ax in (top, bottom):
            ax.set_ylim(0, 1.05)
            ax.set_xticks(x, [r["arm"] for r in task_rows], rotation=20, ha="right", fontsize=7)
    fig.suptitle(suite.name)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)

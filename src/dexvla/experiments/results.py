"""A suite's results: aggregation over seeds, provenance, the Markdown table and the plot."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from dexvla.eval.report import wilson_interval
from dexvla.experiments.suites import Suite
from dexvla.io import atomic_write

SCRIPTED = "scripted expert (ceiling)"


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


def compare_arms(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each task's later arms against its first trained arm (the suite's reference recipe):
    the difference in success and Fisher's exact test (two-sided) on the pooled episodes.

    Pooling treats every episode as independent, so it ignores the seed-to-seed spread the t
    interval shows; a small p with overlapping intervals is a reason for more seeds.
    """
    from scipy import stats

    comparisons = []
    for task in dict.fromkeys(row["task"] for row in rows):
        arms = [r for r in rows if r["task"] == task and r["arm"] != SCRIPTED]
        for row in arms[1:]:
            base = arms[0]
            table = [
                [row["successes"], row["episodes"] - row["successes"]],
                [base["successes"], base["episodes"] - base["successes"]],
            ]
            comparisons.append(
                {
                    "task": task,
                    "arm": row["arm"],
                    "against": base["arm"],
                    "difference": row["success_mean"] - base["success_mean"],
                    "fisher_p": float(stats.fisher_exact(table).pvalue),
                }
            )
    return comparisons


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


def git_revision(directory: Path) -> str | None:
    """HEAD of the git checkout holding `directory` (the run's output directory), with
    '+dirty' when tracked files have changes; None outside any checkout (or without git).

    Found from the directory, not from this file, so it also works for an installed package.
    """

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def revision_note(revision: str | None, directory: Path) -> str:
    """How results.md states the revision, saying why when there is none."""
    if revision is None:
        return f"git revision unknown ({directory} is not inside a git checkout)"
    return f"git revision `{revision}`"


def markdown(suite: Suite, data: dict[str, Any]) -> str:
    size = data["size"]
    reference = suite.reference
    lines = [
        f"# Benchmark `{suite.name}`",
        "",
        suite.description[0].upper() + suite.description[1:] + ".",
        "",
        f"- command: `{data['command']}`",
        f"- started {data['date']}, finished {data['finished']}; {data['git_note']}",
        f"- machine: {', '.join(f'{k} {v}' for k, v in data['machine'].items())}",
        *(
            [f"- tables re-rendered {rendered['date']} (`--report-only`); {rendered['git_note']}"]
            if (rendered := data.get("rendered"))
            else []
        ),
        f"- size `{size['name']}`: {size['episodes']} demonstrations per task, "
        f"{size['image_size']} px cameras, training steps {size['steps'][0]} / "
        f"{size['steps'][1]} / {size['steps'][2]} at batch {size['batch_size']}, "
        f"{size['eval_episodes']} evaluation episodes per run, {data['seeds']} training seed(s)"
        + (
            f"; stage recipe overrides {json.dumps(size['overrides'])}" if size["overrides"] else ""
        ),
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
    if data.get("comparisons"):
        lines += [
            "",
            "Each arm against the task's first arm: Fisher's exact test (two-sided) on the "
            "pooled episodes, which ignores the seed-to-seed spread (read it with the intervals).",
            "",
            "| task | arm | against | difference in success | Fisher's exact p |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['task']} | {c['arm']} | {c['against']} | {c['difference']:+.2f} "
            f"| {c['fisher_p']:.3g} |"
            for c in data["comparisons"]
        ]
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
        if stages:
            bottom.legend(fontsize=7)
        for ax in (top, bottom):
            ax.set_ylim(0, 1.05)
            ax.set_xticks(x, [r["arm"] for r in task_rows], rotation=20, ha="right", fontsize=7)
    fig.suptitle(suite.name)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)

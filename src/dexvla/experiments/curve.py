"""Learning curves: closed-loop success against training samples seen, from one training run.

A `dexvla train` run with `--keep-last 0` keeps every `--save-every` checkpoint. Each kept
checkpoint is exported as a policy (its EMA weights, as `final/` would be), evaluated on the
same episodes, and becomes one point: samples seen (from the checkpoint's trainer state),
success with its Wilson interval, and the fraction of episodes reaching each reward stage.
Every step resumes: an exported policy is reused, an evaluation skips finished episodes.

Writes `curve.json`, `curve.md` and `curve.png` in `out`, with `policies/step-N/` and
`eval/step-N/` beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dexvla.eval import DEFAULT_EVAL_SEED
from dexvla.eval.evaluate import EvalConfig, evaluate
from dexvla.io import atomic_write, atomic_write_json, atomic_write_text, read_json
from dexvla.policy.checkpoint import CONFIG_NAME
from dexvla.train.checkpoint import STATE_FILE, list_checkpoints
from dexvla.train.config import parse_names
from dexvla.train.engine import CHECKPOINTS_DIR
from dexvla.train.stages import export_checkpoint


@dataclass(frozen=True)
class CurveConfig:
    """Which run, on which data (as trained), evaluated how."""

    run: Path  # a `dexvla train --out` directory
    data: tuple[Path, ...]  # the run's datasets: they give the stats and object-position width
    task: str
    out: Path
    episodes: int = 10
    seed: int = DEFAULT_EVAL_SEED
    workers: int = 1
    image_size: int = 128
    max_steps: int | None = None  # episode limit (default: the task's)
    init: Path | None = None  # the run's --init, where its architecture comes from it
    every: int = 1  # every n-th kept checkpoint (the last one always)


def learning_curve(config: CurveConfig) -> list[dict[str, Any]]:
    """Export and evaluate the run's kept checkpoints; returns the curve's points."""
    checkpoints = list_checkpoints(config.run / CHECKPOINTS_DIR)
    if not checkpoints:
        raise FileNotFoundError(f"{config.run} holds no complete checkpoint under checkpoints/")
    if config.every < 1 or config.episodes < 1:
        raise ValueError("every and episodes must be at least 1")
    chosen = checkpoints[config.every - 1 :: config.every]
    if chosen[-1:] != checkpoints[-1:]:
        chosen.append(checkpoints[-1])
    points = []
    for checkpoint in chosen:
        policy = config.out / "policies" / checkpoint.name
        if not (policy / CONFIG_NAME).is_file():
            export_checkpoint(checkpoint, config.data, policy, config.init)
        summary = evaluate(
            EvalConfig(
                task=config.task,
                episodes=config.episodes,
                out=config.out / "eval" / checkpoint.name,
                checkpoint=policy,
                seed=config.seed,
                workers=config.workers,
                videos=0,
                max_steps=config.max_steps,
                image_size=config.image_size,
                threads=1 if config.workers > 1 else None,
                progress=False,
            )
        )["summary"]
        state = read_json(checkpoint / STATE_FILE, "trainer state")
        points.append(
            {
                "checkpoint": checkpoint.name,
                "step": int(state["step"]),
                "samples_seen": int(state["samples_seen"]),
                "episodes": summary["episodes"],
                "successes": summary["successes"],
                "success_rate": summary["success_rate"],
                "success_ci95": summary["success_ci95"],
                "stage_reached": {
                    stage["name"]: stage["fraction"]
                    for stage in summary.get("stage_reached", {}).values()
                },
            }
        )
        write_curve(config, points)
    return points


def write_curve(config: CurveConfig, points: list[dict[str, Any]]) -> None:
    """curve.json (points + configuration), curve.md (a table) and curve.png, atomically."""
    config.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items()}
    settings["data"] = [str(p) for p in config.data]
    atomic_write_json(config.out / "curve.json", {"config": settings, "points": points})
    atomic_write_text(config.out / "curve.md", markdown(config, points))
    plot_curve(points, config.out / "curve.png", f"{config.task}: {config.run.name}")


def markdown(config: CurveConfig, points: list[dict[str, Any]]) -> str:
    stages = list(points[0]["stage_reached"]) if points else []
    lines = [
        f"# Learning curve: {config.run} on {config.task}",
        "",
        f"{config.episodes} evaluation episodes per point from seed {config.seed}; 95% Wilson "
        "intervals; stage columns are the fraction of episodes reaching that reward stage.",
        "",
        "| step | samples seen | success | 95% interval | " + " | ".join(stages) + " |",
        "|---|---|---|---|" + "---|" * len(stages),
    ]
    for p in points:
        low, high = p["success_ci95"]
        cells = [f"{p['stage_reached'].get(name, 0.0):.0%}" for name in stages]
        lines.append(
            f"| {p['step']} | {p['samples_seen']} | {p['successes']}/{p['episodes']} | "
            f"{low:.2f}-{high:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def plot_curve(points: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [p["samples_seen"] for p in points]
    figure, axis = plt.subplots(figsize=(7, 4))
    for name in points[0]["stage_reached"] if points else []:
        axis.plot(samples, [p["stage_reached"][name] for p in points], "--", label=name)
    rates = [p["success_rate"] for p in points]
    low = [p["success_rate"] - p["success_ci95"][0] for p in points]
    high = [p["success_ci95"][1] - p["success_rate"] for p in points]
    axis.errorbar(samples, rates, yerr=[low, high], fmt="o-", color="black", label="success")
    axis.set(xlabel="training samples seen", ylabel="fraction of episodes", ylim=(-0.02, 1.02))
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def curve_config(args: Any) -> CurveConfig:
    """The `dexvla learning-curve` flags as a CurveConfig."""
    return CurveConfig(
        run=Path(args.run),
        data=tuple(Path(p) for p in parse_names(args.data)),
        task=args.task,
        out=Path(args.out),
        episodes=args.episodes,
        seed=args.seed,
        workers=args.workers,
        image_size=args.image_size,
        max_steps=args.max_steps,
        init=Path(args.init) if args.init else None,
        every=args.every,
    )


def summary_lines(points: Sequence[dict[str, Any]]) -> list[str]:
    return [
        f"step {p['step']:>6} ({p['samples_seen']} samples): {p['successes']}/{p['episodes']}"
        for p in points
    ]
